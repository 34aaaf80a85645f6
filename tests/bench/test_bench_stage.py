import pytest
from rich.console import Console

from lmforge.config import RunConfig
from lmforge.errors import ConfigError, StageError
from lmforge.pipeline import run_stage, stage_spec
from lmforge.workspace import Workspace, read_json


def _cfg(ws, **bench):
    bench = {"duration_s": 1.0, "warmup_s": 0.3, "concurrency": 2, **bench}
    return RunConfig.model_validate(
        {"workdir": str(ws.root), "train": {"model_name": "tiny"}, "bench": bench}
    )


def test_bench_stage_measures_the_served_model(tiny_workspace):
    ws = tiny_workspace
    cfg = _cfg(ws)
    status, result = run_stage(stage_spec("bench"), cfg, ws, Console(quiet=True))
    assert status == "ran"
    summary = result.summary
    for key in ("requests", "errors", "requests_per_second", "p50_ms", "p99_ms", "p95_ms"):
        assert key in summary
    assert summary["requests"] > 0 and summary["errors"] == 0
    assert summary["concurrency"] == 2 and summary["model"] == "tiny"
    latencies = read_json(ws.root / "bench" / "latencies.json")
    assert len(latencies) == summary["requests"]
    assert max(latencies) == pytest.approx(summary["max_ms"], abs=1e-3)
    assert read_json(ws.root / "bench" / "summary.json") == summary
    assert ws.is_complete("bench")
    # Inputs are the served model's files: unchanged model and config -> skipped next time.
    status, _ = run_stage(stage_spec("bench"), cfg, ws, Console(quiet=True))
    assert status == "skipped"


def test_bench_stage_without_registry_says_what_to_run(tmp_path):
    ws = Workspace(tmp_path / "run")
    with pytest.raises(StageError, match="run the train stage first"):
        run_stage(stage_spec("bench"), _cfg(ws), ws, Console(quiet=True))


def test_texts_per_request_over_the_server_limit_is_refused_early(tiny_workspace):
    cfg = _cfg(tiny_workspace, texts_per_request=100)
    with pytest.raises(ConfigError, match=r"texts_per_request=100 exceeds serve\.max_texts=64"):
        run_stage(stage_spec("bench"), cfg, tiny_workspace, Console(quiet=True))
