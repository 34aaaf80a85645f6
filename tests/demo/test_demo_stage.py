"""The corpus stage inside a run: summary, outputs, a clean folder, the manifest."""

import io
import json

from rich.console import Console

from lmforge.config import CorpusConfig, RunConfig
from lmforge.demo import corpus_sources, stage
from lmforge.pipeline import run_stage, stage_spec
from lmforge.workspace import Workspace


def _run(tmp_path, docs=600, seed=0):
    cfg = RunConfig(workdir=str(tmp_path / "run"), corpus=CorpusConfig(docs=docs, seed=seed))
    ws = Workspace(cfg.workdir)
    status, result = run_stage(stage_spec("corpus"), cfg, ws, Console(file=io.StringIO()))
    return cfg, ws, status, result


def test_stage_generates_into_the_corpus_folder(tmp_path):
    cfg, ws, status, result = _run(tmp_path)
    assert status == "ran"
    assert stage.stage_inputs(cfg, ws) == []
    summary = result.summary
    assert summary["docs"] == 600 and abs(summary["noise_rate"] - 0.37) <= 0.02
    assert set(summary["counts"]) == {"source", "lang", "label", "noise"}
    assert summary["seconds"] > 0
    folder = ws.stage_dir("corpus")
    assert all(p.exists() and folder in p.parents for p in result.outputs)
    assert {p.name for p in result.outputs} >= {"corpus.json", "ground_truth.jsonl", "web"}
    entry = json.loads(ws.manifest_path.read_text())["stages"]["corpus"]
    assert entry["status"] == "complete" and "corpus/web" in entry["outputs"]
    assert ws.is_complete("corpus")
    assert len(corpus_sources(folder)) == 4


def test_stage_clears_files_of_a_previous_generation(tmp_path):
    _, ws, _, _ = _run(tmp_path, docs=1500, seed=1)
    folder = ws.stage_dir("corpus")
    (folder / "notes.txt").write_text("left over")
    (folder / "web" / "99999").mkdir()
    (folder / "web" / "99999" / "old.html").write_text("<html></html>")
    _, _, status, _ = _run(tmp_path, docs=300, seed=2)
    assert status == "ran"
    assert not (folder / "notes.txt").exists()
    pages = sorted(p.stem for p in (folder / "web").rglob("*.html"))
    truth = [json.loads(line) for line in (folder / "ground_truth.jsonl").open()]
    assert pages == sorted(t["id"] for t in truth if t["source"] == "web")


def test_unchanged_config_skips_the_stage(tmp_path):
    _run(tmp_path)
    _, _, status, result = _run(tmp_path)
    assert status == "skipped" and result.summary["docs"] == 600
