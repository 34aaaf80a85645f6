"""Fuzz the HTTP API: schemathesis against /openapi.json, then hand-made malformed requests.

    python bench/serve_fuzz.py [--max-examples 25] [--seed 0] [--skip-schemathesis]

Builds two tiny models and, for each part, a temp registry (model "tiny": v1 production, v2
unaliased; an admin and a predict API key) served by a real `lmforge serve` child process:

  1. `schemathesis run` against /openapi.json with the admin key, so the admin endpoints are
     exercised too (examples, coverage, fuzzing and stateful phases, `--checks all`);
  2. on a fresh server (schemathesis leaves aliases and policies behind), a hand-made list of
     malformed requests over raw sockets (bytes no HTTP client library would send: invalid
     UTF-8, lying Content-Length, 10 MB chunked bodies, lone surrogates, ...), probing after
     each one that the server still answers (/v1/models, the shadow report, a prediction).

Prints one JSON object on stdout (progress goes to stderr): requests sent, counts by status,
the number of 5xx (the target is 0), every failing case with the server's traceback.
Exit status 0 when there is no 5xx and no failing malformed case, else 1.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lmforge.bench.server_process import ServerProcess

MODEL = "tiny"
LABELS = ["complaint", "praise", "question"]
# Pinned in the server's config so the limit cases below probe the exact boundaries.
MAX_TEXTS = 64
MAX_CHARS = 4000
MAX_BODY_BYTES = 1_000_000
HUGE_BODY_BYTES = 10 * 1024 * 1024
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
LOG_ALL = 10**9  # "the whole log" for ServerProcess.output_tail
PARSEABLE_DEPTH = 500  # well under Python's recursion limit: parses, then is refused
TRAINING_TEXTS = [
    "The delivery was late and the box was damaged.",
    "Great phone, the battery lasts two days.",
    "How long is the warranty for the laptop?",
    "物流太慢了，包装也破了。",
    "音质很好，佩戴舒服，非常满意。",
    "这个套餐每个月多少钱？",
]


def log(message: str) -> None:
    print(f"[serve_fuzz] {message}", file=sys.stderr, flush=True)


# --- the registry under test -------------------------------------------------------------------
def build_model_dirs(root: Path) -> list[Path]:
    """Two saved random-init classifiers (same tokenizer and labels, other weights)."""
    import torch

    from lmforge.models.encoder import EncoderClassifier, EncoderConfig
    from lmforge.models.export import save_model_dir
    from lmforge.text.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(TRAINING_TEXTS * 3, vocab_size=200, min_frequency=1)
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = EncoderConfig(
            vocab_size=tokenizer.get_vocab_size(),
            n_classes=len(LABELS),
            d_model=32,
            n_layers=1,
            n_heads=4,
            d_ff=64,
            max_len=32,
        )
        model = EncoderClassifier(cfg).eval()
        dirs.append(save_model_dir(root / f"model-{seed}", model, tokenizer, LABELS))
    return dirs


def make_registry(root: Path, model_dirs: list[Path]) -> tuple[Path, str, str]:
    """A registry with `tiny` v1 (production) and v2; returns it, an admin and a predict key."""
    from lmforge.registry import ModelRegistry
    from lmforge.serve.auth import KeyStore

    registry = ModelRegistry(root)
    registry.register(MODEL, model_dirs[0], metrics={}, alias="production")
    if len(model_dirs) > 1:
        registry.register(MODEL, model_dirs[1], metrics={})
    keys = KeyStore(root)
    # A huge rate and burst: the fuzzer must hit validation, not the rate limiter.
    _, admin = keys.create("fuzz", role="admin", rate=1e6, burst=10**6)
    _, predict = keys.create("fuzz-predict", role="predict", rate=1e6, burst=10**6)
    return root, admin, predict


def write_serve_config(path: Path) -> Path:
    cfg = {
        "serve": {
            "max_texts": MAX_TEXTS,
            "max_chars": MAX_CHARS,
            "max_body_bytes": MAX_BODY_BYTES,
        }
    }
    path.write_text(json.dumps(cfg), encoding="utf-8")  # JSON is YAML
    return path


# --- server log: tracebacks --------------------------------------------------------------------
_LEVEL_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):")


def error_blocks(text: str) -> list[str]:
    """Each logged traceback, with the line that introduced it ("unhandled error in ...")."""
    lines = text.splitlines()
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for i, line in enumerate(lines):
        starts = i + 1 < len(lines) and lines[i + 1].startswith("Traceback (most recent call")
        if starts and not line.startswith(("Traceback", " ")) and line.strip():
            current = [line]
            blocks.append(current)
        elif current is not None and _LEVEL_LINE.match(line) and not starts:
            current = None  # an unrelated log line ends the traceback
        elif current is not None:
            current.append(line)
    return ["\n".join(b).rstrip() for b in blocks]


def log_notes(text: str) -> dict[str, int]:
    """Counts of uvicorn's one-line warnings (e.g. 'Invalid HTTP request received.')."""
    notes = Counter(line.strip() for line in text.splitlines() if _LEVEL_LINE.match(line))
    return dict(notes)


def short_traceback(block: str, max_lines: int = 40) -> str:
    """The header, the innermost frames and the exception: enough to find the bug."""
    lines = block.splitlines()
    if len(lines) <= max_lines:
        return block
    return "\n".join([lines[0], "  ...", *lines[-(max_lines - 2) :]])


# --- raw HTTP ----------------------------------------------------------------------------------
@dataclass
class RawResponse:
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None  # why no complete response came back
    elapsed_s: float = 0.0

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def http(
    method: str,
    target: str,
    body: bytes | None = None,
    headers: list[tuple[str, str | bytes]] | None = None,
    *,
    content_type: str | None = "application/json",
    content_length: bool = True,
    version: str = "HTTP/1.1",
) -> bytes:
    """The bytes of one request; `Connection: close` so the server ends the exchange."""
    head: list[tuple[str, str | bytes]] = [("Host", "127.0.0.1"), ("Connection", "close")]
    names = {n.lower() for n, _ in headers or []}
    if body is not None and content_type is not None and "content-type" not in names:
        head.append(("Content-Type", content_type))
    if body is not None and content_length and "content-length" not in names:
        head.append(("Content-Length", str(len(body))))
    head += headers or []
    out = f"{method} {target} {version}\r\n".encode("latin-1")
    for name, value in head:
        raw = value if isinstance(value, bytes) else value.encode("latin-1")
        out += name.encode("latin-1") + b": " + raw + b"\r\n"
    return out + b"\r\n" + (body or b"")


def chunked(body: bytes, chunk_size: int = 64 * 1024) -> bytes:
    parts = [
        b"%x\r\n" % len(body[i : i + chunk_size]) + body[i : i + chunk_size] + b"\r\n"
        for i in range(0, len(body), chunk_size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def jbody(value: Any) -> bytes:
    """JSON bytes; ensure_ascii keeps lone surrogates as \\udXXX escapes (valid JSON text)."""
    return json.dumps(value).encode("ascii")


def send_raw(
    host: str, port: int, data: bytes, timeout_s: float = 30.0, half_close: bool = False
) -> RawResponse:
    """Send `data` on a fresh connection and read one response (until close or its length).

    The body is written by a helper thread while this one reads, so a server that answers
    (413) and closes before reading a 10 MB body is seen answering, not as a send error.
    """
    started = time.perf_counter()
    head_only = data.startswith(b"HEAD ")
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        return RawResponse(None, error=f"connect failed: {exc}")
    send_error: list[str] = []

    def write() -> None:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)  # EOF: the client is done, mid-body or not
        except OSError as exc:
            send_error.append(f"{type(exc).__name__}: {exc}")

    sender = threading.Thread(target=write, daemon=True)
    sender.start()
    received = bytearray()
    error: str | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(received) < MAX_RESPONSE_BYTES:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                error = "timed out waiting for the response"
                break
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
            if not chunk:
                break
            received += chunk
            if _complete(bytes(received), head_only):
                break
        else:
            error = error or "response too slow or too large"
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # unblocks the sender if it is still writing
        sock.close()
        sender.join(timeout=10)
    response = _parse_response(bytes(received), head_only)
    response.elapsed_s = time.perf_counter() - started
    if response.status is None:
        response.error = error or (send_error[0] if send_error else "closed without a response")
    return response


def _split_head(raw: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """Status, headers and the bytes after the head of the final response in `raw`."""
    for _ in range(100):  # interim answers (100 Continue) come before the real one
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            return None, {}, b""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return None, {}, b""
        if not (100 <= int(parts[1]) < 200 and int(parts[1]) != 101):
            break
        raw = rest
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _dechunk(rest: bytes) -> bytes | None:
    """The body of a chunked response, or None while it is incomplete."""
    out = bytearray()
    for _ in range(len(rest) + 1):  # each round consumes at least one byte
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            return None
        try:
            size = int(line.split(b";", 1)[0].strip() or b"x", 16)
        except ValueError:
            return bytes(out)  # garbage: give back what was readable
        if size == 0:
            return bytes(out)
        if len(rest) < size + 2:
            return None
        out += rest[:size]
        rest = rest[size + 2 :]
    return None


def _complete(raw: bytes, head_only: bool = False) -> bool:
    status, headers, rest = _split_head(raw)
    if status is None:
        return False
    if head_only:
        return True  # a HEAD response has headers only
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _dechunk(rest) is not None
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        return len(rest) >= int(length)
    return status in (204, 304)


def _parse_response(raw: bytes, head_only: bool = False) -> RawResponse:
    status, headers, rest = _split_head(raw)
    if status is None:
        return RawResponse(None)
    if head_only:
        return RawResponse(status, headers)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(rest) or b""
    else:
        length = headers.get("content-length")
        body = rest[: int(length)] if length is not None and length.isdigit() else rest
    return RawResponse(status, headers, body)


# --- the malformed cases -----------------------------------------------------------------------
@dataclass(frozen=True)
class FuzzCase:
    """One hand-made request and what the server may answer.

    expect: the statuses allowed (None: any status below 500).
    protocol_level: uvicorn itself may refuse the bytes before the app sees them, with a
        plain-text 400 or by closing the connection; that is not the app's JSON contract.
    no_response_ok: the client broke the exchange (EOF mid-body), so no answer is fine.
    before: requests that set up the state the case needs, sent first (not judged).
    after: requests that undo the case's state change, sent after it (not judged).
    """

    name: str
    group: str
    request: bytes
    expect: frozenset[int] | None = None
    protocol_level: bool = False
    no_response_ok: bool = False
    half_close: bool = False
    before: tuple[bytes, ...] = ()
    after: tuple[bytes, ...] = ()


def _statuses(*codes: int) -> frozenset[int]:
    return frozenset(codes)


S200 = _statuses(200)
S400 = _statuses(400)
S401 = _statuses(401)
S404 = _statuses(404)
S405 = _statuses(405)
S413 = _statuses(413)
S422 = _statuses(422)
OK_OR_400 = _statuses(200, 400)
OK_OR_422 = _statuses(200, 422)  # a valid string the server may serve or politely refuse
REFUSED = _statuses(400, 404, 405, 413, 414, 422, 431)


def malformed_cases(admin_key: str, predict_key: str) -> list[FuzzCase]:
    """The hand-made cases, in an order where state-changing ones come late and undo themselves.

    Every error must be a 4xx JSON `{"error": {"code", "message"}}`; nothing may be a 5xx.
    """
    admin = [("Authorization", f"Bearer {admin_key}")]
    cases: list[FuzzCase] = []

    def add(
        name: str, group: str, request: bytes, expect: frozenset[int] | None, **kw: Any
    ) -> None:
        cases.append(FuzzCase(name, group, request, expect, **kw))

    def predict(
        body: bytes, headers: list[tuple[str, str | bytes]] | None = None, **kw: Any
    ) -> bytes:
        return http("POST", "/v1/predict", body, headers, **kw)

    ok = jbody({"texts": ["The box arrived broken."]})
    reset_routing = http("PUT", f"/v1/admin/models/{MODEL}/routing", b"{}", admin)

    # -- HTTP framing (uvicorn may answer some of these itself) ------------------------------------
    g = "framing"
    add("truncated JSON body", g, predict(b'{"texts": ["abc'), S400)
    add(
        "Content-Length larger than the body, then EOF",
        g,
        predict(ok, [("Content-Length", str(len(ok) + 100))]),
        REFUSED,
        no_response_ok=True,
        half_close=True,
    )
    add(
        "Content-Length smaller than the body",
        g,
        predict(ok, [("Content-Length", "5")]),
        REFUSED,
        protocol_level=True,
    )
    for bad in ("-1", "abc", "+5", "1e3", " ", "99999999999999999999999999"):
        add(
            f"Content-Length {bad!r}",
            g,
            predict(ok, [("Content-Length", bad)]),
            REFUSED,
            protocol_level=True,
            no_response_ok=True,
        )
    add(
        "two different Content-Length headers",
        g,
        predict(ok, [("Content-Length", str(len(ok))), ("Content-Length", "3")]),
        REFUSED,
        protocol_level=True,
        no_response_ok=True,
    )
    add(
        "Content-Length and Transfer-Encoding chunked together",
        g,
        predict(chunked(ok), [("Transfer-Encoding", "chunked"), ("Content-Length", "4")]),
        _statuses(200, 400),
        protocol_level=True,
        no_response_ok=True,
    )
    add(
        "chunked body with a bad chunk size",
        g,
        predict(
            b"zz\r\n" + ok + b"\r\n0\r\n\r\n",
            [("Transfer-Encoding", "chunked")],
            content_length=False,
        ),
        REFUSED,
        protocol_level=True,
        no_response_ok=True,
    )
    add(
        "chunked body cut off mid-chunk, then EOF",
        g,
        predict(b"100\r\n" + ok, [("Transfer-Encoding", "chunked")], content_length=False),
        REFUSED,
        protocol_level=True,
        no_response_ok=True,
        half_close=True,
    )
    add(
        "valid chunked body",
        g,
        predict(chunked(ok, 7), [("Transfer-Encoding", "chunked")], content_length=False),
        S200,
    )
    huge = b'{"texts": ["' + b"a" * HUGE_BODY_BYTES + b'"]}'
    add("10 MB body with Content-Length", g, predict(huge), S413)
    add(
        "10 MB body chunked (no Content-Length)",
        g,
        predict(chunked(huge), [("Transfer-Encoding", "chunked")], content_length=False),
        S413,
    )
    # No length and no chunking: HTTP/1.1 says the request has no body; the rest is garbage.
    add(
        "10 MB body without Content-Length or chunking",
        g,
        predict(huge, content_length=False),
        REFUSED,
        protocol_level=True,
    )
    add(
        "Content-Length of 10**20 (declared, not sent)",
        g,
        predict(b"{}", [("Content-Length", str(10**20))]),
        S413 | S400,
        protocol_level=True,
        no_response_ok=True,
        half_close=True,
    )
    add("Expect: 100-continue", g, predict(ok, [("Expect", "100-continue")]), S200)
    add("HTTP/1.0 request", g, predict(ok, version="HTTP/1.0"), S200)
    add(
        "garbage request line",
        g,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        REFUSED,
        protocol_level=True,
        no_response_ok=True,
    )
    add(
        "HTTP/0.9 style request",
        g,
        b"GET /healthz\r\n\r\n",
        S200 | REFUSED,
        protocol_level=True,
        no_response_ok=True,
    )
    add(
        "unknown method FOO",
        g,
        http("FOO", "/v1/predict", ok),
        REFUSED | S405,
        protocol_level=True,
        no_response_ok=True,
    )
    add(
        "header with a NUL byte",
        g,
        predict(ok, [("X-Test", b"a\x00b")]),
        REFUSED,
        protocol_level=True,
        no_response_ok=True,
    )
    add(
        "header without a colon",
        g,
        predict(ok, [("NoColonHere", "")]).replace(b"NoColonHere: \r\n", b"NoColonHere\r\n"),
        REFUSED,
        protocol_level=True,
        no_response_ok=True,
    )
    add(
        "64 KB header value",
        g,
        predict(ok, [("X-Junk", "x" * 65536)]),
        S200 | REFUSED,
        protocol_level=True,
        no_response_ok=True,
    )
    add(
        "1000 headers",
        g,
        predict(ok, [(f"X-H{i}", "v") for i in range(1000)]),
        S200 | REFUSED,
        protocol_level=True,
        no_response_ok=True,
    )
    add(
        "64 KB URL",
        g,
        http("GET", "/v1/models/" + "a" * 65536),
        REFUSED,
        protocol_level=True,
        no_response_ok=True,
    )
    add(
        "absolute-form request target",
        g,
        http("POST", "http://example.invalid/v1/predict", ok),
        S200 | REFUSED,
        protocol_level=True,
    )
    add(
        "latin-1 bytes in X-Routing-Key", g, predict(ok, [("X-Routing-Key", b"\xff\xfe\xe9")]), S200
    )
    add("empty X-Routing-Key", g, predict(ok, [("X-Routing-Key", "")]), S200)
    add("10 KB X-Routing-Key", g, predict(ok, [("X-Routing-Key", "k" * 10240)]), S200)
    add(
        "X-Request-ID with CRLF-like bytes",
        g,
        predict(ok, [("X-Request-ID", b"a\rb")]),
        S200 | REFUSED,
        protocol_level=True,
        no_response_ok=True,
    )
    add("10 KB X-Request-ID", g, predict(ok, [("X-Request-ID", "r" * 10240)]), S200)

    # -- X-Timeout-Ms ------------------------------------------------------------------------------
    g = "timeout-header"
    for bad in (
        "",
        "abc",
        "-1",
        "0",
        "-0",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "1e309",
        "1e-400",
        "0x10",
        "10ms",
        "1,5",
        "9" * 400,
        "\xa0",
    ):
        add(f"X-Timeout-Ms {bad[:20]!r}", g, predict(ok, [("X-Timeout-Ms", bad)]), S400)
    for good in ("5000", " 2500 ", "1e4", "100000000"):
        add(f"X-Timeout-Ms {good!r} (valid)", g, predict(ok, [("X-Timeout-Ms", good)]), S200)

    # -- methods -----------------------------------------------------------------------------------
    g = "methods"
    for method, path in (
        ("GET", "/v1/predict"),
        ("PUT", "/v1/predict"),
        ("DELETE", "/v1/predict"),
        ("PATCH", "/v1/feedback"),
        ("GET", f"/v1/models/{MODEL}/predict"),
        ("POST", "/v1/models"),
        ("DELETE", f"/v1/models/{MODEL}"),
        ("POST", "/healthz"),
        ("PUT", "/readyz"),
        ("POST", "/openapi.json"),
        ("POST", "/metrics"),
        ("GET", f"/v1/admin/models/{MODEL}/promote"),
        ("POST", f"/v1/admin/models/{MODEL}/routing"),
        ("POST", f"/v1/admin/models/{MODEL}/history"),
        ("OPTIONS", "/v1/predict"),
        ("TRACE", "/v1/predict"),
    ):
        add(f"{method} {path}", g, http(method, path, None, admin), S405)
    add("HEAD /healthz", g, http("HEAD", "/healthz"), _statuses(200, 405))
    add(
        "CONNECT",
        g,
        b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        REFUSED,
        protocol_level=True,
        no_response_ok=True,
    )

    # -- paths -------------------------------------------------------------------------------------
    g = "paths"
    for target in (
        "/v1/models/..%2F..%2Fetc/predict",
        "/v1/models/..%2F..%2Fetc%2Fpasswd",
        "/v1/models/%2e%2e/predict",
        "/v1/models/..%5C..%5Cetc/predict",
        "/v1/models/%00/predict",
        "/v1/models/tiny%00/predict",
        "/v1/models/%ff%fe/predict",
        "/v1/models/%ED%A0%80/predict",
        "/v1/models/%F0%9F%91%8D/predict",
        "/v1/models/" + "n" * 5000 + "/predict",
        "/v1/models/../../../etc/passwd",
        "/v1/../v1/predict/../../etc/passwd",
        "//v1//predict",
        "/v1/predict%00",
        "/v1/predict?texts=a&%ff=%fe",
    ):
        add(f"POST {target[:60]}", g, http("POST", target, ok), S404 | S405 | S200)
    add("GET /v1/models/%2e%2e", g, http("GET", "/v1/models/%2e%2e"), S404)
    add("GET /v1/models/unknown", g, http("GET", "/v1/models/unknown"), S404)
    add("GET /v1/models/%ff", g, http("GET", "/v1/models/%ff"), S404)
    add("GET /nope", g, http("GET", "/nope"), S404)
    add(
        "trailing slash /v1/predict/",
        g,
        http("POST", "/v1/predict/", ok),
        _statuses(200, 307, 404, 405),
    )
    for target in (
        "/v1/admin/models/..%2F..%2Fetc/history",
        "/v1/admin/models/%2e%2e/history",
        "/v1/admin/models/%00/history",
        "/v1/admin/models/%ff/history",
        "/v1/admin/models/" + "n" * 5000 + "/history",
    ):
        add(f"GET {target[:60]}", g, http("GET", target, None, admin), S200 | S404)
    add(
        "promote model '..'",
        g,
        http("POST", "/v1/admin/models/%2e%2e/promote", jbody({"version": 1}), admin),
        S404,
    )
    add(
        "rollback model '../x'",
        g,
        http("POST", "/v1/admin/models/..%2Fx/rollback", b"{}", admin),
        S404,
    )
    add(
        "delete alias '..%2Fproduction'",
        g,
        http("DELETE", f"/v1/admin/models/{MODEL}/aliases/..%2Fproduction", None, admin),
        S404,
    )
    add(
        "delete alias '%2e%2e'",
        g,
        http("DELETE", f"/v1/admin/models/{MODEL}/aliases/%2e%2e", None, admin),
        S404,
    )
    add(
        "routing of model '..'",
        g,
        http("PUT", "/v1/admin/models/%2e%2e/routing", b"{}", admin),
        S404,
    )

    # -- auth --------------------------------------------------------------------------------------
    g = "auth"
    history = f"/v1/admin/models/{MODEL}/history"
    for label, value in (
        ("no scheme", admin_key),
        ("Bearer without token", "Bearer"),
        ("Bearer and spaces", "Bearer    "),
        ("Basic", "Basic Zm9vOmJhcg=="),
        ("lmf_ prefix only", "Bearer lmf_"),
        ("bad key id", "Bearer lmf_zzzz_secret"),
        ("right id, wrong secret", "Bearer " + admin_key[:-4] + "AAAA"),
        ("1 MB token", "Bearer " + "A" * (1024 * 1024)),
        ("latin-1 token", b"Bearer \xe9\xff"),
    ):
        add(
            f"admin with Authorization {label}",
            g,
            http("GET", history, None, [("Authorization", value)]),
            (S401 | REFUSED) if label == "1 MB token" else S401,
            protocol_level=label == "1 MB token",
            no_response_ok=label == "1 MB token",
        )
    add(
        "admin with a predict-role key",
        g,
        http("GET", history, None, [("Authorization", f"Bearer {predict_key}")]),
        _statuses(403),
    )
    add("admin with X-API-Key", g, http("GET", history, None, [("X-API-Key", admin_key)]), S200)
    add(
        "predict with an unknown key",
        g,
        predict(ok, [("X-API-Key", "lmf_0123456789abcdef_x")]),
        S401,
    )
    add("admin without any key", g, http("GET", history), S401)

    # -- JSON syntax and encoding ------------------------------------------------------------------
    g = "json"
    for name, body, expect in (
        ("empty body", b"", S400),
        ("whitespace body", b"  \r\n\t ", S400),
        ("unquoted keys", b'{texts: ["a"]}', S400),
        ("single quotes", b"{'texts': ['a']}", S400),
        ("trailing comma", b'{"texts": ["a"],}', S400),
        ("trailing garbage", b'{"texts": ["a"]} xyz', S400),
        ("two JSON documents", b'{"texts": ["a"]}{"texts": ["b"]}', S400),
        ("comment", b'{"texts": ["a"] /* hi */}', S400),
        ("invalid UTF-8 byte", b'{"texts": ["\xff\xfe"]}', S400),
        ("overlong UTF-8 slash", b'{"texts": ["\xc0\xaf"]}', S400),
        ("UTF-8-encoded surrogate (CESU)", b'{"texts": ["\xed\xa0\x80"]}', S400),
        ("truncated UTF-8 sequence", b'{"texts": ["\xe4\xb8"]}', S400),
        ("bad escape", b'{"texts": ["\\x41"]}', S400),
        ("short unicode escape", b'{"texts": ["\\u12"]}', S400),
        ("raw control char in string", b'{"texts": ["a\x01b"]}', S400),
        ("NUL byte outside strings", b'{"texts": ["a"]}\x00', S400),
        ("UTF-8 BOM", b"\xef\xbb\xbf" + ok, OK_OR_400),
        ("UTF-16 body", '{"texts": ["a"]}'.encode("utf-16"), OK_OR_400),
        ("UTF-32 body", '{"texts": ["a"]}'.encode("utf-32"), OK_OR_400),
        ("top-level array", b'["a"]', S422),
        ("top-level string", b'"a"', S422),
        ("top-level number", b"1", S422),
        ("top-level null", b"null", S422),
        ("top-level true", b"true", S422),
        ("NaN in texts", b'{"texts": [NaN]}', S422),
        ("Infinity in texts", b'{"texts": [Infinity]}', S422),
        ("1e999 in texts", b'{"texts": [1e999]}', S422),
        ("5000-digit integer", b'{"texts": [' + b"9" * 5000 + b"]}", _statuses(400, 422)),
        ("4000-digit integer key", b'{"texts": ["a"], "key": ' + b"9" * 4000 + b"}", S422),
        ("100000 nested arrays", b"[" * 100_000 + b"]" * 100_000, S400),
        (
            "100000 nested arrays in texts",
            b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            S400,
        ),
        ("100000 nested objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, S400),
        ("unclosed 100000 nesting", b"[" * 100_000, S400),
        (
            f"{PARSEABLE_DEPTH} nested arrays in texts",
            b'{"texts": ' + b"[" * PARSEABLE_DEPTH + b"]" * PARSEABLE_DEPTH + b"}",
            S422,
        ),
        ("duplicate keys, last invalid", b'{"texts": ["a"], "texts": 1}', S422),
        ("duplicate keys, last valid", b'{"texts": 1, "texts": ["a"]}', S200),
    ):
        add(f"predict: {name}", g, predict(body), expect)

    # -- wrong types and limits --------------------------------------------------------------------
    g = "predict-shape"
    for name, value, expect in (
        ("no texts", {}, S422),
        ("texts null", {"texts": None}, S422),
        ("texts string", {"texts": "a"}, S422),
        ("texts number", {"texts": 1}, S422),
        ("texts object", {"texts": {"0": "a"}}, S422),
        ("texts bool", {"texts": True}, S422),
        ("texts [null]", {"texts": [None]}, S422),
        ("texts [1]", {"texts": [1]}, S422),
        ("texts [true]", {"texts": [True]}, S422),
        ("texts [[a]]", {"texts": [["a"]]}, S422),
        ("texts [{}]", {"texts": [{}]}, S422),
        ("texts [a, 1]", {"texts": ["a", 1]}, S422),
        ("texts huge float", {"texts": [1e308]}, S422),
        ("texts huge int", {"texts": [10**300]}, S422),
        ("key number", {"texts": ["a"], "key": 1}, S422),
        ("key empty", {"texts": ["a"], "key": ""}, S422),
        ("key 257 chars", {"texts": ["a"], "key": "k" * 257}, S422),
        ("key list", {"texts": ["a"], "key": ["k"]}, S422),
        ("key bool", {"texts": ["a"], "key": True}, S422),
        ("key object", {"texts": ["a"], "key": {}}, S422),
        ("key null (allowed)", {"texts": ["a"], "key": None}, S200),
        ("key 256 chars (allowed)", {"texts": ["a"], "key": "k" * 256}, S200),
        ("unknown field", {"texts": ["a"], "extra": 1}, S422),
        ("unknown field only", {"model": "tiny"}, S422),
        ("texts empty", {"texts": []}, S422),
        (f"{MAX_TEXTS + 1} texts", {"texts": ["a"] * (MAX_TEXTS + 1)}, S422),
        ("100000 texts", {"texts": ["a"] * 100_000}, S422),
        (f"{MAX_TEXTS} texts (allowed)", {"texts": ["a"] * MAX_TEXTS}, S200),
        (f"text of {MAX_CHARS + 1} chars", {"texts": ["a" * (MAX_CHARS + 1)]}, S422),
        (f"text of {MAX_CHARS} chars (allowed)", {"texts": ["a" * MAX_CHARS]}, S200),
        (f"{MAX_CHARS} CJK chars (allowed)", {"texts": ["物" * MAX_CHARS]}, S200),
        ("empty string text", {"texts": [""]}, OK_OR_422),
        ("whitespace-only text", {"texts": [" \t\n"]}, OK_OR_422),
    ):
        add(f"predict: {name}", g, predict(jbody(value)), expect)
    add(
        "model predict with wrong types",
        g,
        http("POST", f"/v1/models/{MODEL}/predict", jbody({"texts": [1, 2]})),
        S422,
    )
    add("unknown model predict", g, http("POST", "/v1/models/nope/predict", ok), S404)

    # -- content types -----------------------------------------------------------------------------
    g = "content-type"
    for ctype in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/json; charset=utf-16",
        "application/xml",
        "*/*",
        "garbage",
    ):
        add(
            f"predict Content-Type {ctype}",
            g,
            predict(ok, content_type=ctype),
            _statuses(200, 400, 415),
        )
    add("predict without Content-Type", g, predict(ok, content_type=None), _statuses(200, 415))
    add(
        "form body",
        g,
        predict(b"texts=a&texts=b", content_type="application/x-www-form-urlencoded"),
        _statuses(400, 415),
    )
    add(
        "latin-1 body declared latin-1",
        g,
        predict(
            '{"texts": ["café"]}'.encode("latin-1"),
            content_type="application/json; charset=latin-1",
        ),
        _statuses(200, 400, 415),
    )

    # -- feedback ----------------------------------------------------------------------------------
    g = "feedback"

    def feedback(body: bytes) -> bytes:
        return http("POST", "/v1/feedback", body)

    for name, body in (
        ("outcome -1", jbody({"request_id": "r", "outcome": -1})),
        ("outcome 1.5", jbody({"request_id": "r", "outcome": 1.5})),
        ("outcome NaN", b'{"request_id": "r", "outcome": NaN}'),
        ("outcome Infinity", b'{"request_id": "r", "outcome": Infinity}'),
        ("outcome -Infinity", b'{"request_id": "r", "outcome": -Infinity}'),
        ("outcome 1e999", b'{"request_id": "r", "outcome": 1e999}'),
        ("outcome huge int", b'{"request_id": "r", "outcome": ' + b"9" * 400 + b"}"),
        ("outcome string", jbody({"request_id": "r", "outcome": "one"})),
        ("outcome list", jbody({"request_id": "r", "outcome": [1]})),
        ("outcome null", jbody({"request_id": "r", "outcome": None})),
        ("no outcome", jbody({"request_id": "r"})),
        ("no request_id", jbody({"outcome": 1})),
        ("request_id empty", jbody({"request_id": "", "outcome": 1})),
        ("request_id 129 chars", jbody({"request_id": "r" * 129, "outcome": 1})),
        ("request_id number", jbody({"request_id": 5, "outcome": 1})),
        ("request_id lone surrogate", jbody({"request_id": "\ud800", "outcome": 1})),
        ("extra field", jbody({"request_id": "r", "outcome": 1, "x": 1})),
        ("array body", b"[]"),
        ("deep nesting", b'{"request_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("500-deep nesting", b'{"request_id": ' + b"[" * 500 + b"]" * 500 + b', "outcome": 1}'),
        ("invalid JSON", b'{"request_id": '),
    ):
        add(f"feedback: {name}", g, feedback(body), _statuses(400, 422))
    # Unknown ids wait FEEDBACK_WAIT_S for another worker's flush: only a few of these.
    add(
        "feedback: unknown request id",
        g,
        feedback(jbody({"request_id": "nope", "outcome": 1})),
        S404,
    )
    add(
        "feedback: unknown id with NUL",
        g,
        feedback(jbody({"request_id": "a\u0000b", "outcome": 0})),
        S404,
    )
    add(
        "feedback: unknown id with emoji and RTL",
        g,
        feedback(jbody({"request_id": "\u202e👍🏽", "outcome": 0.5})),
        S404,
    )

    # -- admin bodies ------------------------------------------------------------------------------
    g = "admin"
    promote = f"/v1/admin/models/{MODEL}/promote"
    for name, body, expect in (
        ("version 0", jbody({"version": 0}), S422),
        ("version -1", jbody({"version": -1}), S422),
        ("version 1.5", jbody({"version": 1.5}), S422),
        ("version string", jbody({"version": "1"}), _statuses(200, 422)),
        ("version null", jbody({"version": None}), S422),
        ("version NaN", b'{"version": NaN}', S422),
        ("version Infinity", b'{"version": Infinity}', S422),
        ("version 1e999", b'{"version": 1e999}', S422),
        ("version 2**63 - 1 (unknown)", jbody({"version": 2**63 - 1}), _statuses(404, 422)),
        ("version 2**63", jbody({"version": 2**63}), _statuses(404, 422)),
        ("version 10**30", jbody({"version": 10**30}), _statuses(404, 422)),
        ("version 4000 digits", b'{"version": ' + b"9" * 4000 + b"}", _statuses(404, 422)),
        ("version 99 (unknown)", jbody({"version": 99}), S404),
        ("alias empty", jbody({"version": 1, "alias": ""}), S422),
        ("alias with slash", jbody({"version": 1, "alias": "../x"}), S422),
        ("alias 65 chars", jbody({"version": 1, "alias": "a" * 65}), S422),
        ("alias lone surrogate", jbody({"version": 1, "alias": "\ud800"}), S422),
        ("alias NUL", jbody({"version": 1, "alias": "a\u0000"}), S422),
        ("alias number", jbody({"version": 1, "alias": 5}), S422),
        ("extra field", jbody({"version": 1, "force": True}), S422),
        ("no body", b"", S400),
        ("array body", b"[1]", S422),
        ("500-deep nesting", b'{"version": ' + b"[" * 500 + b"]" * 500 + b"}", S422),
    ):
        add(f"promote: {name}", g, http("POST", promote, body, admin), expect)
    add(
        "promote: unknown model",
        g,
        http("POST", "/v1/admin/models/nope/promote", jbody({"version": 1}), admin),
        S404,
    )
    # Found by schemathesis (ST101, --max-examples 100): a huge version on a garbage name.
    add(
        "promote: version 2**64 on an unknown model (schemathesis)",
        g,
        http(
            "POST",
            "/v1/admin/models/%12%F1%83%B4%93/promote",
            jbody({"version": 2**64, "alias": "p"}),
            admin,
        ),
        _statuses(404, 422),
    )
    add(
        "promote: v1 to production again (no-op)",
        g,
        http("POST", promote, jbody({"version": 1}), admin),
        S200,
    )
    rollback = f"/v1/admin/models/{MODEL}/rollback"
    for name, body, expect in (
        ("alias with no history", jbody({"alias": "never-set"}), S404),
        ("alias empty", jbody({"alias": ""}), S422),
        ("alias lone surrogate", jbody({"alias": "\udfff"}), S422),
        ("alias 100 chars", jbody({"alias": "a" * 100}), S422),
        ("alias list", jbody({"alias": ["production"]}), S422),
        ("extra field", jbody({"alias": "production", "to": 1}), S422),
    ):
        add(f"rollback: {name}", g, http("POST", rollback, body, admin), expect)
    add(
        "rollback: unknown model",
        g,
        http("POST", "/v1/admin/models/nope/rollback", b"{}", admin),
        S404,
    )

    routing = f"/v1/admin/models/{MODEL}/routing"
    for name, body, expect in (
        ("canary_weight -0.1", jbody({"canary_weight": -0.1}), S422),
        ("canary_weight 2", jbody({"canary_weight": 2}), S422),
        ("canary_weight NaN", b'{"canary_weight": NaN}', S422),
        ("canary_weight Infinity", b'{"canary_weight": Infinity}', S422),
        ("canary_weight string", jbody({"canary_weight": "0.5"}), _statuses(200, 422)),
        ("canary without a canary alias", jbody({"canary_weight": 0.5}), S422),
        ("ab with one arm", jbody({"ab": {"production": 1}}), S422),
        ("ab empty", jbody({"ab": {}}), S422),
        ("ab negative weight", jbody({"ab": {"production": -1, "b": 1}}), S422),
        ("ab zero weight", jbody({"ab": {"production": 0, "b": 1}}), S422),
        ("ab NaN weight", b'{"ab": {"production": NaN, "b": 1}}', S422),
        ("ab with shadow arm", jbody({"ab": {"production": 1, "shadow": 1}}), S422),
        ("ab unknown alias", jbody({"ab": {"production": 1, "nope": 1}}), S422),
        ("ab 2000 unknown aliases", jbody({"ab": {f"a{i}": 1 for i in range(2000)}}), S422),
        ("ab lone-surrogate alias", jbody({"ab": {"\ud800": 1, "production": 1}}), S422),
        ("ab alias with NUL", jbody({"ab": {"a\u0000": 1, "production": 1}}), S422),
        ("ab weights as strings", jbody({"ab": {"production": "x", "b": 1}}), S422),
        ("ab list", jbody({"ab": ["production", "b"]}), S422),
        ("shadow 'yes' (pydantic's lax bool)", jbody({"shadow": "yes"}), OK_OR_422),
        ("shadow 'maybe'", jbody({"shadow": "maybe"}), S422),
        ("unknown field", jbody({"weights": 1}), S422),
        ("array body", b"[]", S422),
        ("null body", b"null", S422),
        ("invalid JSON", b"{", S400),
        ("100000 nested arrays", b'{"ab": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", S400),
        ("500 nested arrays", b'{"ab": ' + b"[" * 500 + b"]" * 500 + b"}", S422),
    ):
        add(
            f"routing: {name}", g, http("PUT", routing, body, admin), expect, after=(reset_routing,)
        )
    add(
        "routing: unknown model",
        g,
        http("PUT", "/v1/admin/models/nope/routing", b"{}", admin),
        S404,
    )
    # An A/B split between production and an alias pointing at v2, then undone.
    # An A/B split between production and an alias 'b' on v2: each case sets it up itself
    # (`before`) and undoes it (`after`), so it holds alone and in any selection of cases.
    promote_b = http("POST", promote, jbody({"version": 2, "alias": "b"}), admin)
    drop_b = http("DELETE", f"/v1/admin/models/{MODEL}/aliases/b", None, admin)
    for name, body in (
        ("ab weights 1e308 (sum overflows)", jbody({"ab": {"production": 1e308, "b": 1e308}})),
        ("ab weight Infinity", b'{"ab": {"production": Infinity, "b": 1}}'),
        ("ab weight 1e400", b'{"ab": {"production": 1e400, "b": 1}}'),
        ("ab weight 5e-324", jbody({"ab": {"production": 5e-324, "b": 1}})),
        ("ab weight 10**400 (an integer)", b'{"ab": {"production": 1' + b"0" * 400 + b', "b": 1}}'),
    ):
        put = http("PUT", routing, body, admin)
        add(f"routing: {name}", g, put, OK_OR_422, before=(promote_b,), after=(reset_routing,))
        # Stored or refused, the policy must leave the API working: read it back (GET
        # /v1/models renders it as JSON) and route a keyed request by it.
        add(
            f"GET /v1/models after routing: {name}",
            g,
            http("GET", "/v1/models"),
            S200,
            before=(promote_b, put),
            after=(reset_routing,),
        )
        add(
            f"predict with a key after routing: {name}",
            g,
            predict(ok, [("X-Routing-Key", "user-1")]),
            S200,
            before=(promote_b, put),
            after=(reset_routing,),
        )
    add(
        "delete alias production",
        g,
        http("DELETE", f"/v1/admin/models/{MODEL}/aliases/production", None, admin),
        _statuses(409),
    )
    add("delete alias b", g, drop_b, S200, before=(promote_b,))
    add(
        "delete unknown alias",
        g,
        http("DELETE", f"/v1/admin/models/{MODEL}/aliases/nope", None, admin),
        S404,
    )
    add(
        "delete alias of unknown model",
        g,
        http("DELETE", "/v1/admin/models/nope/aliases/x", None, admin),
        S404,
    )
    add(
        "history of unknown model",
        g,
        http("GET", "/v1/admin/models/nope/history", None, admin),
        S200 | S404,
    )
    report = "/v1/admin/shadow/report"
    for query in (
        "",
        f"?model={MODEL}",
        "?model=nope",
        "?model=%00",
        "?model=%ff",
        "?since_s=60",
        "?since_s=0",
        "?since_s=-1",
        "?since_s=abc",
        "?since_s=nan",
        "?since_s=inf",
        "?since_s=-inf",
        "?since_s=1e308",
        "?since_s=-1e308",
        "?since_s=1e400",
        "?since_s=",
        "?model=&since_s=1",
    ):
        add(
            f"shadow report {query or '(no query)'}",
            g,
            http("GET", report + query, None, admin),
            _statuses(200, 400, 404, 422),
        )

    # -- unicode edge cases in texts (valid JSON strings; 200 or a 422, never a 5xx) ---------------
    g = "unicode"
    for name, text in (
        ("NUL", "a\u0000b"),
        ("only NUL", "\u0000"),
        ("RTL override", "\u202eevil\u202c text"),
        ("Arabic RTL", "مرحبا بالعالم"),
        ("emoji with skin tone", "great 👍🏽"),
        ("ZWJ family emoji", "👨\u200d👩\u200d👧\u200d👦"),
        ("1000 combining marks", "e" + "\u0301" * 1000),
        ("BOM inside text", "\ufeffhello"),
        ("noncharacter U+FFFF", "\uffff"),
        ("U+10FFFF", "\U0010ffff"),
        ("C1 controls", "\x85\x9f"),
        ("line/paragraph separators", "a\u2028b\u2029c"),
        ("private use", "\ue000\U000f0000"),
        ("zero-width only", "\u200b\u200c\u200d"),
        ("valid surrogate pair escape", "\U0001f600"),
        ("lone high surrogate", "\ud800"),
        ("lone low surrogate", "\udfff"),
        ("reversed surrogate pair", "\udc00\ud800"),
        ("surrogate inside text", "ab\ud83dcd"),
    ):
        add(f"predict text: {name}", g, predict(jbody({"texts": [text]})), OK_OR_422)
    add(
        "model predict text: lone surrogate",
        g,
        http("POST", f"/v1/models/{MODEL}/predict", jbody({"texts": ["x\udbff"]})),
        OK_OR_422,
    )
    # A routing key is stored with the request's assignment: these can break later writes, so
    # they come last and the invariant probe after each one says whether they did.
    for name, key in (
        ("NUL", "k\u0000"),
        ("RTL and emoji", "\u202e👍"),
        ("lone surrogate", "\udfff"),
    ):
        keyed = predict(jbody({"texts": ["a"], "key": key}))
        add(f"predict key: {name}", g, keyed, OK_OR_422)
        # The assignment (with its key) is written by the store's next flush, which the shadow
        # report forces: a key the store cannot write shows up here.
        add(
            f"shadow report after predict key: {name}",
            g,
            http("GET", f"/v1/admin/shadow/report?model={MODEL}", None, admin),
            S200,
            before=(keyed,),
        )
    return cases


# --- running the malformed cases ----------------------------------------------------------------
def is_json_error(body: bytes) -> bool:
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    error = payload.get("error") if isinstance(payload, dict) else None
    return (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    )


def judge(case: FuzzCase, response: RawResponse) -> list[str]:
    """What is wrong with the server's answer to `case` (empty: nothing)."""
    if response.status is None:
        return [] if case.no_response_ok else [f"no response ({response.error})"]
    problems = []
    status = response.status
    if status >= 500:
        problems.append(f"server error {status}")
    elif case.expect is not None and status not in case.expect:
        problems.append(f"status {status}, expected one of {sorted(case.expect)}")
    plain_400_ok = case.protocol_level and status == 400  # uvicorn's own refusal
    bodiless = case.request.startswith(b"HEAD ")
    if status >= 400 and not (plain_400_ok or bodiless) and not is_json_error(response.body):
        problems.append('error body is not JSON {"error": {"code", "message"}}')
    return problems


def count_5xx(by_status: Counter[str]) -> int:
    return sum(n for s, n in by_status.items() if s.isdigit() and int(s) >= 500)


_API_KEY = re.compile(rb"lmf_[0-9a-f]{16}_[A-Za-z0-9_-]{8,}")


def show_request(data: bytes, limit: int = 400) -> str:
    """A readable excerpt of raw request bytes (escapes shown, API keys hidden), with its size."""
    shown = _API_KEY.sub(b"lmf_<key>", data[:limit])
    text = shown.decode("latin-1").encode("unicode_escape").decode("ascii")
    return text + (f"... ({len(data)} bytes in all)" if len(data) > limit else "")


def invariant_probe(host: str, port: int, admin_key: str) -> dict[str, int | None]:
    """Statuses of requests a healthy server answers 200: the API, the store, the model."""
    admin = [("Authorization", f"Bearer {admin_key}")]
    probes = {
        "GET /v1/models": http("GET", "/v1/models"),
        "GET /v1/admin/shadow/report": http(
            "GET", f"/v1/admin/shadow/report?model={MODEL}", None, admin
        ),
        "POST /v1/predict": http("POST", "/v1/predict", jbody({"texts": ["probe"]})),
    }
    return {name: send_raw(host, port, data, timeout_s=30).status for name, data in probes.items()}


def run_malformed(
    server: ServerProcess,
    admin_key: str,
    cases: list[FuzzCase],
    probe_every: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Send every case; judge it; probe the server's health; attribute server tracebacks."""
    host, port = server.host, server.port
    assert port is not None
    by_status: Counter[str] = Counter()
    failing: list[dict[str, Any]] = []
    broken: list[dict[str, Any]] = []
    healthy = True
    seen_log = len(server.output_tail(LOG_ALL))
    started = time.perf_counter()
    # Setup, cleanup and probe requests are counted apart: their 5xx are consequences (a
    # broken server) that the case which broke it already shows.
    support_by_status: Counter[str] = Counter()

    def label(status: int | None) -> str:
        return str(status) if status is not None else "none"

    for i, case in enumerate(cases):
        for data in case.before:
            support_by_status[label(send_raw(host, port, data).status)] += 1
        response = send_raw(host, port, case.request, half_close=case.half_close)
        by_status[label(response.status)] += 1
        after = [send_raw(host, port, data).status for data in case.after]
        support_by_status.update(label(s) for s in after)
        problems = judge(case, response)
        probe: dict[str, int | None] = {}
        if probe_every and (i % probe_every == 0 or i == len(cases) - 1):
            probe = invariant_probe(host, port, admin_key)
            support_by_status.update(label(s) for s in probe.values())
        full_log = server.output_tail(LOG_ALL)
        new_log, seen_log = full_log[seen_log:], len(full_log)
        tracebacks = [short_traceback(b) for b in error_blocks(new_log)]
        if problems:
            failing.append(
                {
                    "name": case.name,
                    "group": case.group,
                    "request": show_request(case.request),
                    "status": response.status,
                    "response": response.body[:600].decode("utf-8", "replace"),
                    "error": response.error,
                    "problems": problems,
                    "after_statuses": after,
                    "server_was_healthy_before": healthy,
                    "tracebacks": tracebacks,
                }
            )
        if probe:
            ok_now = all(s == 200 for s in probe.values())
            if healthy and not ok_now:
                broken.append(
                    {
                        "after_case": case.name,
                        "request": show_request(case.request),
                        "status": response.status,
                        "probe": probe,
                        "tracebacks": tracebacks,
                    }
                )
            elif not healthy and ok_now:
                broken.append({"recovered_after_case": case.name})
            healthy = ok_now
        if progress and (problems or i % 25 == 0):
            mark = "FAIL" if problems else "ok"
            log(f"malformed {i + 1}/{len(cases)} [{mark}] {case.name}: {response.status}")
    server_alive = server.proc is not None and server.proc.poll() is None
    return {
        "cases": len(cases),
        "requests": sum(by_status.values()) + sum(support_by_status.values()),
        "duration_s": round(time.perf_counter() - started, 2),
        "by_status": dict(sorted(by_status.items())),
        "5xx": count_5xx(by_status),
        "setup_cleanup_probe_requests": sum(support_by_status.values()),
        "setup_cleanup_probe_by_status": dict(sorted(support_by_status.items())),
        "setup_cleanup_probe_5xx": count_5xx(support_by_status),
        "failing_count": len(failing),
        "failing": failing,
        "health_transitions": broken,
        "healthy_at_end": healthy,
        "server_alive": server_alive,
        "server_log_notes": log_notes(server.output_tail(LOG_ALL)),
    }


# --- schemathesis ------------------------------------------------------------------------------
def run_schemathesis(
    url: str,
    admin_key: str,
    report_dir: Path,
    max_examples: int,
    seed: int,
    checks: str,
    phases: str,
    timeout_s: float,
) -> dict[str, Any]:
    """`schemathesis run` as a child process; its NDJSON events are read back for the report."""
    ndjson = report_dir / "events.ndjson"
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        checks,
        "--phases",
        phases,
        "--header",
        f"Authorization: Bearer {admin_key}",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        "1",  # 2 shared cores: the server needs the other one
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(ndjson),
        "--output-sanitize",
        "false",
        "--no-color",
    ]
    log(f"schemathesis: max {max_examples} examples per operation, phases {phases}")
    started = time.perf_counter()
    with open(report_dir / "schemathesis.out", "wb") as out:
        try:
            proc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
            )
            exit_code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            exit_code = None  # subprocess.run killed it
    duration = time.perf_counter() - started
    output = (report_dir / "schemathesis.out").read_text("utf-8", "replace")
    summary = summarize_ndjson(ndjson) if ndjson.is_file() else {}
    return {
        "exit_code": exit_code,
        "timed_out": exit_code is None,
        "duration_s": round(duration, 2),
        "max_examples": max_examples,
        "seed": seed,
        "checks": checks,
        "phases": phases,
        **summary,
        "output_tail": output[-3000:] if not summary or exit_code not in (0, 1) else "",
    }


def _b64(value: Any) -> str:
    if isinstance(value, dict) and "$base64" in value:
        return base64.b64decode(value["$base64"]).decode("utf-8", "replace")
    return "" if value is None else str(value)


def summarize_ndjson(path: Path) -> dict[str, Any]:
    """Requests by status, 5xx responses and failed checks from schemathesis' event stream."""
    by_status: Counter[str] = Counter()
    by_operation: Counter[str] = Counter()
    failures: dict[tuple[str, str, str], dict[str, Any]] = {}
    server_errors: list[dict[str, Any]] = []
    errors: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            event = json.loads(line)
            kind, data = next(iter(event.items()))
            if kind in ("NonFatalError", "FatalError"):
                errors.append(str(data.get("info", data))[:500])
            if kind != "ScenarioFinished":
                continue
            recorder = data.get("recorder", {})
            interactions = recorder.get("interactions", {})
            for case_id, interaction in interactions.items():
                response = interaction.get("response")
                request = interaction.get("request", {})
                status = response.get("status_code") if response else None
                by_status[str(status)] += 1
                # The spec's template ("/v1/models/{name}"), not the generated path.
                value = recorder.get("cases", {}).get(case_id, {}).get("value", {})
                template = value.get("path") or urlsplit(request.get("uri", "")).path
                by_operation[f"{request.get('method')} {template}"] += 1
                if status is not None and status >= 500:
                    server_errors.append(
                        {
                            "case_id": case_id,
                            "method": request.get("method"),
                            "uri": request.get("uri"),
                            "body": _b64(request.get("body"))[:600],
                            "status": status,
                            "response": _b64(response.get("content"))[:600],
                        }
                    )
            for case_id, checks in recorder.get("checks", {}).items():
                for check in checks:
                    if check.get("status") != "failure":
                        continue
                    info = check.get("failure_info", {}).get("failure", {})
                    key = (check["name"], str(info.get("operation")), str(info.get("title")))
                    if key in failures:
                        failures[key]["count"] += 1
                        continue
                    interaction = interactions.get(case_id, {})
                    request = interaction.get("request", {})
                    response = interaction.get("response") or {}
                    failures[key] = {
                        "check": check["name"],
                        "code": info.get("code"),
                        "title": info.get("title"),
                        "operation": info.get("operation"),
                        "message": str(info.get("message", ""))[:600],
                        "count": 1,
                        "example": {
                            "method": request.get("method"),
                            "uri": request.get("uri"),
                            "body": _b64(request.get("body"))[:600],
                            "status": response.get("status_code"),
                            "response": _b64(response.get("content"))[:600],
                        },
                    }
    return {
        "requests": sum(by_status.values()),
        "by_status": dict(sorted(by_status.items())),
        "by_operation": dict(sorted(by_operation.items())),
        "5xx": count_5xx(by_status),
        "server_errors": server_errors,
        "failures": list(failures.values()),
        "errors": errors,
    }


def attach_tracebacks(server_errors: list[dict[str, Any]], log_text: str) -> None:
    """Pair each 5xx (in order) with the next logged 'unhandled error in METHOD PATH' block."""
    blocks = error_blocks(log_text)
    used: set[int] = set()
    for error in server_errors:
        path = unquote(urlsplit(error.get("uri") or "").path)
        wanted = f"unhandled error in {error.get('method')} {path}"
        for i, block in enumerate(blocks):
            if i not in used and block.startswith(wanted):
                used.add(i)
                error["traceback"] = short_traceback(block)
                break


def distinct_exceptions(log_text: str) -> dict[str, int]:
    """Each distinct (where, exception) in the server log with its count: the bug list."""
    found: Counter[str] = Counter()
    for block in error_blocks(log_text):
        lines = block.splitlines()
        last = next((ln for ln in reversed(lines) if ln and not ln.startswith(" ")), "")
        frames = [ln.strip() for ln in lines if ln.strip().startswith('File "') and "lmforge" in ln]
        where = frames[-1] if frames else ""
        found[f"{lines[0][:80]} | {where} | {last[:200]}"] += 1
    return dict(found.most_common())


# --- main --------------------------------------------------------------------------------------
def serve_and(registry: Path, config: Path, what: str, job: Any) -> tuple[dict[str, Any], str]:
    """Start a server on `registry`, run `job(server)`, stop it; the result and the server log."""
    log(f"{what}: starting the server")
    server = ServerProcess(registry, host="127.0.0.1", config_path=config, startup_timeout_s=180)
    with server:
        log(f"{what}: server ready at {server.url}")
        try:
            result = job(server)
        finally:
            log_text = server.output_tail(LOG_ALL)
    return result, log_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max-examples",
        type=int,
        default=25,
        help="schemathesis examples per operation and phase (default 25)",
    )
    parser.add_argument("--seed", type=int, default=0, help="schemathesis seed")
    parser.add_argument("--checks", default="all", help="schemathesis --checks (default all)")
    parser.add_argument(
        "--phases", default="examples,coverage,fuzzing,stateful", help="schemathesis --phases"
    )
    parser.add_argument(
        "--schemathesis-timeout",
        type=float,
        default=1800.0,
        help="seconds before the schemathesis run is stopped",
    )
    parser.add_argument("--skip-schemathesis", action="store_true")
    parser.add_argument("--skip-malformed", action="store_true")
    parser.add_argument(
        "--probe-every",
        type=int,
        default=1,
        help="check the server's health after every N malformed cases (0: off)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep the registry and reports in this folder (default: a temp dir)",
    )
    args = parser.parse_args(argv)
    if args.max_examples < 1:
        parser.error("--max-examples must be >= 1")

    work = args.keep or Path(tempfile.mkdtemp(prefix="serve-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "serve_fuzz", "cpus": os.cpu_count()}
    try:
        started = time.perf_counter()
        log("building two tiny models")
        model_dirs = build_model_dirs(work / "models")
        config = write_serve_config(work / "serve.json")
        result["server"] = {
            "model": f"{MODEL} v1 production + v2 (random-init encoder, d_model 32)",
            "max_texts": MAX_TEXTS,
            "max_chars": MAX_CHARS,
            "max_body_bytes": MAX_BODY_BYTES,
        }
        total_requests = total_5xx = 0
        ok = True
        if not args.skip_schemathesis:
            # Its own registry: schemathesis' admin calls leave aliases and policies behind.
            registry, admin_key, _ = make_registry(work / "registry-schemathesis", model_dirs)
            report_dir = work / "schemathesis"
            report_dir.mkdir(exist_ok=True)

            def fuzz(server: ServerProcess) -> dict[str, Any]:
                return run_schemathesis(
                    server.url,
                    admin_key,
                    report_dir,
                    args.max_examples,
                    args.seed,
                    args.checks,
                    args.phases,
                    args.schemathesis_timeout,
                )

            st, log_text = serve_and(registry, config, "schemathesis", fuzz)
            attach_tracebacks(st.get("server_errors", []), log_text)
            st["server_exceptions"] = distinct_exceptions(log_text)
            st["server_log_notes"] = log_notes(log_text)
            result["schemathesis"] = st
            total_requests += st.get("requests", 0)
            total_5xx += st.get("5xx", 0)
            ok = ok and st.get("5xx", 1) == 0 and not st["timed_out"]
            log(
                f"schemathesis: {st.get('requests')} requests, {st.get('5xx')} 5xx, "
                f"{len(st.get('failures', []))} distinct check failures"
            )
        if not args.skip_malformed:
            registry, admin_key, predict_key = make_registry(
                work / "registry-malformed", model_dirs
            )
            cases = malformed_cases(admin_key, predict_key)

            def send(server: ServerProcess) -> dict[str, Any]:
                return run_malformed(server, admin_key, cases, args.probe_every)

            mal, log_text = serve_and(registry, config, "malformed", send)
            mal["server_exceptions"] = distinct_exceptions(log_text)
            result["malformed"] = mal
            total_requests += mal["requests"]
            total_5xx += mal["5xx"] + mal["setup_cleanup_probe_5xx"]
            ok = ok and mal["5xx"] == 0 and not mal["failing"] and mal["server_alive"]
            log(
                f"malformed: {mal['cases']} cases, {mal['requests']} requests, "
                f"{mal['5xx']} 5xx, {mal['failing_count']} failing"
            )
        result["total"] = {
            "requests": total_requests,
            "5xx": total_5xx,
            "duration_s": round(time.perf_counter() - started, 1),
        }
        result["ok"] = ok
        result["work_dir"] = str(work) if args.keep else None
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, ensure_ascii=True, default=_jsonable))
    return 0 if result.get("ok") else 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
