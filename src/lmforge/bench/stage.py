"""The bench stage: serve the production model in a child process and measure it under load.

Writes `bench/latencies.json` (every successful request's latency in ms, for the report's
histogram); the summary holds requests, errors, throughput and latency percentiles.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from rich.console import Console

from lmforge.bench.loadgen import default_texts, drive_load, load_eval_texts
from lmforge.bench.server_process import ServerProcess
from lmforge.config import RunConfig, dump_config
from lmforge.errors import ConfigError, StageError
from lmforge.pipeline import StageResult
from lmforge.registry import ModelRegistry, ModelVersion
from lmforge.workspace import Workspace, atomic_write_json, atomic_write_text, list_files

BENCH_HOST = "127.0.0.1"  # the benchmark never exposes the server beyond this machine


def served_version(cfg: RunConfig, ws: Workspace) -> ModelVersion:
    """The version `lmforge serve` would pick: serve.model, else the trained model, else the
    only model in the registry."""
    if not (ws.registry_dir / "registry.sqlite").is_file():
        raise StageError(
            f"no model registry at {ws.registry_dir}; run the train stage first (`lmforge train`)"
        )
    registry = ModelRegistry(ws.registry_dir, create=False)
    name = cfg.serve.model
    if name is None and cfg.train.model_name in registry.names():
        name = cfg.train.model_name
    return registry.resolve(name, "production")


def stage_inputs(cfg: RunConfig, ws: Workspace) -> list[Path]:
    if not (ws.registry_dir / "registry.sqlite").is_file():
        return []  # run() explains what is missing
    return list_files([served_version(cfg, ws).path])


def run(cfg: RunConfig, ws: Workspace, console: Console) -> StageResult:
    bench = cfg.bench
    if bench.texts_per_request > cfg.serve.max_texts:
        raise ConfigError(
            f"bench.texts_per_request={bench.texts_per_request} exceeds "
            f"serve.max_texts={cfg.serve.max_texts}; every request would be refused. "
            "Lower one or raise the other"
        )
    version = served_version(cfg, ws)
    eval_path = ws.root / "train" / "eval.parquet"
    texts = load_eval_texts(eval_path) if eval_path.is_file() else default_texts()
    out_dir = ws.stage_dir("bench")
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        # The child reads the serve limits from the same config this run uses, minus the
        # prediction cache: the load repeats eval texts, and the stage measures the model.
        served_cfg = cfg.model_copy(deep=True)
        served_cfg.serve.cache.kind = "none"
        config_path = Path(tmp) / "config.yaml"
        atomic_write_text(config_path, dump_config(served_cfg))
        console.print(f"starting the server for {version.name} v{version.version} ...")
        with ServerProcess(
            ws.registry_dir, host=BENCH_HOST, model=version.name, config_path=config_path
        ) as server:
            console.print(
                f"load: {bench.concurrency} clients x {bench.duration_s:g} s "
                f"(+{bench.warmup_s:g} s warmup), {bench.texts_per_request} text(s)/request "
                f"-> {server.url}"
            )
            result = asyncio.run(drive_load(server.url, bench, texts))
    latencies_path = out_dir / "latencies.json"
    atomic_write_json(latencies_path, [round(ms, 3) for ms in result.ok_latencies_ms()])
    summary = result.summary()
    summary.update(model=version.name, model_version=version.version)
    console.print(
        f"{summary['requests']} requests, {summary['errors']} errors, "
        f"{summary['requests_per_second']:.1f} req/s, p50 {summary['p50_ms']:.1f} ms, "
        f"p99 {summary['p99_ms']:.1f} ms"
    )
    return StageResult(summary=summary, outputs=[latencies_path])
