"""Closed-loop load: `concurrency` clients, each sending its next request when the last returns.

A warmup phase runs first and is not recorded (connection setup, first-call allocations).
The run stops at `warmup_s + duration_s` or after `max_requests` recorded requests, whichever
comes first, so a dead server answering every call with a fast error cannot spin forever.
Latency percentiles are over successful (2xx) requests; failures are counted by status (or
by exception name: ConnectionRefusedError, TimeoutError, ...).

Requests go through `lmforge.bench.http1`, a lean keep-alive client, so the numbers describe
the server rather than the client's own overhead.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.bench.http1 import Http1Connection, ProtocolError
from lmforge.bench.stats import count_by, latency_summary
from lmforge.config import BenchConfig
from lmforge.errors import InputDataError

DEFAULT_MAX_REQUESTS = 200_000
REQUEST_TIMEOUT_S = 30.0
PREDICT_PATH = "/v1/predict"

# Used when no eval split is at hand (e.g. `lmforge bench --url`): short and long, en and zh.
_BUILTIN_TEXTS = (
    "The delivery arrived two days late and the box was damaged.",
    "Great battery life, I charge it once a week at most.",
    "Customer service hung up on me twice; I want a refund.",
    "The update fixed the crash on startup, thanks to the team.",
    "Meeting moved to Thursday at 10am, same room as last time.",
    "Quarterly revenue grew 12% while operating costs stayed flat.",
    "The app keeps logging me out whenever I switch networks, which is really annoying "
    "because I have to type my password again every single time I leave the office.",
    "Can you recommend a good hiking trail near the lake for beginners?",
    "物流太慢了，等了一个星期才到，包装还破了。",
    "这款耳机音质很好，佩戴也舒服，性价比很高。",
    "客服态度很差，问题到现在还没有解决。",
    "新版本修复了闪退的问题，体验好多了。",
    "下周三下午三点开会，请大家准时参加。",
    "今年第二季度销售额同比增长百分之十五，主要来自线上渠道。",
    "The hotel room was clean but the wifi did not work at all during our stay.",
    "我想了解一下这个套餐的具体资费和合约期限。",
)


def default_texts() -> list[str]:
    """A small built-in set of realistic texts, for loading a server with no eval split."""
    return list(_BUILTIN_TEXTS)


def load_eval_texts(path: str | Path, limit: int = 5000) -> list[str]:
    """Texts of the eval split (`train/eval.parquet`), the requests a real client would send."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"eval split not found: {path}; run the train stage first")
    table = pq.read_table(path, columns=["text"])
    texts = [t for t in table.column("text").to_pylist()[: max(limit, 1)] if t]
    if not texts:
        raise InputDataError(f"eval split {path} has no texts; it cannot drive the load")
    return texts


@dataclass
class LoadResult:
    """Every recorded request: its latency and its status (an int, or an exception name)."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: list[int | str] = field(default_factory=list)
    seconds: float = 0.0
    warmup_requests: int = 0
    concurrency: int = 0
    texts_per_request: int = 1

    def ok_latencies_ms(self) -> list[float]:
        return [ms for ms, s in zip(self.latencies_ms, self.statuses, strict=True) if _is_ok(s)]

    def summary(self) -> dict[str, Any]:
        requests = len(self.statuses)
        errors = sum(1 for s in self.statuses if not _is_ok(s))
        seconds = max(self.seconds, 1e-9)
        return {
            "requests": requests,
            "errors": errors,
            "requests_per_second": round(requests / seconds, 2),
            "texts_per_second": round(requests * self.texts_per_request / seconds, 2),
            **latency_summary(self.ok_latencies_ms()),
            "by_status": count_by(self.statuses),
            "concurrency": self.concurrency,
            "texts_per_request": self.texts_per_request,
            "duration_s": round(self.seconds, 3),
            "warmup_requests": self.warmup_requests,
        }


def _is_ok(status: int | str) -> bool:
    return isinstance(status, int) and 200 <= status < 300


def predict_url(url: str) -> str:
    """Accept a server's base URL or its full predict URL."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InputDataError(f"bench url {url!r} must start with http:// or https://")
    return url if url.endswith(PREDICT_PATH) else url + PREDICT_PATH


async def drive_load(
    url: str,
    cfg: BenchConfig,
    texts: list[str],
    max_requests: int = DEFAULT_MAX_REQUESTS,
) -> LoadResult:
    """Run the warmup and the measured phase against `url`; return every recorded request."""
    if not texts:
        raise InputDataError("no texts to send; pass at least one")
    target = predict_url(url)
    result = LoadResult(concurrency=cfg.concurrency, texts_per_request=cfg.texts_per_request)
    ticket = itertools.count()
    began = time.perf_counter()
    measure_from = began + cfg.warmup_s
    stop_at = measure_from + cfg.duration_s
    issued = 0  # measured requests sent so far; the cap counts these
    failures = (OSError, ProtocolError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)

    async def worker() -> None:
        nonlocal issued
        conn = Http1Connection(target, timeout_s=REQUEST_TIMEOUT_S)
        try:
            while True:
                started = time.perf_counter()
                if started >= stop_at:
                    return
                measured = started >= measure_from
                if measured:
                    if issued >= max_requests:
                        return
                    issued += 1
                k = next(ticket) * cfg.texts_per_request
                batch = [texts[(k + j) % len(texts)] for j in range(cfg.texts_per_request)]
                body = json.dumps({"texts": batch}, ensure_ascii=False).encode()
                status: int | str
                try:
                    status = await conn.post_json(body)
                except failures as exc:  # TimeoutError is an OSError
                    status = type(exc).__name__
                finished = time.perf_counter()
                if not measured:
                    result.warmup_requests += 1
                    continue
                result.latencies_ms.append((finished - started) * 1000.0)
                result.statuses.append(status)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
    result.seconds = max(time.perf_counter() - measure_from, 0.0)
    return result


def run_bench(
    url: str,
    cfg: BenchConfig,
    texts: list[str],
    max_requests: int = DEFAULT_MAX_REQUESTS,
) -> dict[str, Any]:
    """Load an already running server at `url` and return the summary (see `LoadResult`)."""
    return asyncio.run(drive_load(url, cfg, texts, max_requests)).summary()
