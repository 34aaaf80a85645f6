import json

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from lmforge.config import load_config
from lmforge.data import stage
from lmforge.errors import StageError
from lmforge.pipeline import run_stage, stage_spec
from lmforge.report.contract import REPORT_CONTRACT
from lmforge.workspace import Workspace


def quiet() -> Console:
    return Console(quiet=True)


def make_config(tmp_path, rows, **data):
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    base = {"workdir": str(tmp_path / "run"), "data": {"sources": [{"path": str(posts)}], **data}}
    return load_config(base=base), posts


ROWS = [
    {"id": "a", "text": "The blender is loud but it crushes ice well.", "label": "neutral"},
    {"id": "b", "text": "x", "label": "negative"},
    {"id": "c", "text": "音质很好，佩戴舒服，非常满意。", "label": "positive"},
]


def test_stage_run_writes_shards_and_a_report_summary(tmp_path):
    cfg, posts = make_config(tmp_path, ROWS)
    ws = Workspace(cfg.workdir)
    assert stage.stage_inputs(cfg, ws) == [posts]
    result = stage.run(cfg, ws, quiet())
    for key in REPORT_CONTRACT["data"]:
        assert key in result.summary
    assert result.summary["docs_in"] == 3 and result.summary["docs_out"] == 2
    assert result.summary["noise_rate_before"] is None  # no ground truth for user data
    assert [f["step"] for f in result.summary["funnel"]][:2] == ["read", "normalize"]
    data_dir = ws.stage_dir("data")
    assert result.outputs == [
        data_dir / "clean" / "part-00000.parquet",
        data_dir / "rejected" / "part-00000.parquet",
        data_dir / "stats.json",
    ]
    assert pq.read_table(data_dir / "clean").column("id").to_pylist() == ["a", "c"]


def test_stage_through_the_runner_records_manifest_and_uses_ground_truth(tmp_path):
    truth = tmp_path / "truth.jsonl"
    truth.write_text(
        '{"id": "a", "noise": []}\n{"id": "b", "noise": ["too_short"]}\n{"id": "c", "noise": []}\n'
    )
    cfg, _ = make_config(tmp_path, ROWS, ground_truth=str(truth))
    ws = Workspace(cfg.workdir)
    status, result = run_stage(stage_spec("data"), cfg, ws, quiet())
    assert status == "ran"
    assert result.summary["noise_rate_before"] == pytest.approx(1 / 3, abs=1e-3)
    assert result.summary["noise_rate_after"] == 0.0
    assert result.summary["clean_docs_lost_rate"] == 0.0
    assert ws.is_complete("data")
    entry = ws.stage_entry("data")
    assert str(truth) in entry["inputs"]
    assert "data/stats.json" in entry["outputs"]
    assert run_stage(stage_spec("data"), cfg, ws, quiet())[0] == "skipped"


def test_without_sources_or_corpus_the_stage_says_what_to_do(tmp_path):
    cfg = load_config(base={"workdir": str(tmp_path / "run")})
    ws = Workspace(cfg.workdir)
    assert stage.stage_inputs(cfg, ws) == []
    with pytest.raises(StageError, match=r"data\.sources is empty.*corpus"):
        stage.run(cfg, ws, quiet())
