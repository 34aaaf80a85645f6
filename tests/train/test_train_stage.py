import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from lmforge.config import RunConfig
from lmforge.inference import TextClassifier
from lmforge.pipeline import run_stage, stage_spec
from lmforge.registry import ModelRegistry
from lmforge.report.contract import REPORT_CONTRACT
from lmforge.train import stage
from lmforge.train.classify import classification_loss
from lmforge.workspace import Workspace


def quiet() -> Console:
    return Console(file=open("/dev/null", "w"), width=100)


@pytest.fixture
def prepared(make_docs, write_clean):
    def prepare(cfg: RunConfig, n: int = 900) -> Workspace:
        ws = Workspace(cfg.workdir)
        write_clean(ws, make_docs(n, unlabelled=20))
        return ws

    return prepare


def train_rows(ws: Workspace) -> list[dict]:
    lines = (ws.stage_dir("train") / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_stage_learns_the_word_combination_and_registers(tiny_run_config: RunConfig, prepared):
    ws = prepared(tiny_run_config)
    status, result = run_stage(stage_spec("train"), tiny_run_config, ws, quiet())
    assert status == "ran" and ws.is_complete("train")
    summary = result.summary
    assert summary.keys() >= set(REPORT_CONTRACT["train"]) | {
        "model_name",
        "model_version",
        "labels",
        "n_train",
    }
    assert summary["steps"] == 150 and summary["n_train"] + summary["n_eval"] == 900
    assert summary["majority_class_accuracy"] < 0.6
    assert summary["eval_accuracy"] > summary["majority_class_accuracy"] + 0.3
    assert set(summary["per_class"]) == {"bad", "good", "mixed"}
    assert summary["params"] > 0 and summary["tokens_per_second"] > 0
    assert summary["baseline"]["method"].startswith("tfidf")
    assert summary["baseline_accuracy"] > summary["majority_class_accuracy"]

    out = ws.stage_dir("train")
    for name in ("tokenizer.json", "metrics.jsonl", "eval.parquet", "summary.json"):
        assert (out / name).is_file(), name
    version = ModelRegistry(ws.registry_dir).resolve("demo-classifier", "production")
    assert version.version == summary["model_version"] == 1
    assert version.metrics["eval_accuracy"] == summary["eval_accuracy"]

    # The exported model, loaded the way the server loads it, scores the same eval split.
    clf = TextClassifier.load(version.path)
    held_out = pq.read_table(out / "eval.parquet").to_pydict()
    preds = [p["label"] for p in clf.predict(held_out["text"])]
    accuracy = sum(p == g for p, g in zip(preds, held_out["label"], strict=True)) / len(preds)
    assert accuracy == pytest.approx(summary["eval_accuracy"], abs=1e-9)
    assert len(train_rows(ws)) == 150


def test_interrupted_stage_resumes_to_the_same_curve(
    tiny_run_config: RunConfig, monkeypatch, prepared
):
    tiny_run_config.train.max_steps = 60
    tiny_run_config.train.checkpoint_every = 25
    straight_cfg = tiny_run_config.model_copy(deep=True)
    straight_cfg.workdir = str(Path(tiny_run_config.workdir).parent / "straight")
    straight_ws = prepared(straight_cfg)
    stage.run(straight_cfg, straight_ws, quiet())

    ws = prepared(tiny_run_config)
    calls = {"n": 0}

    def interrupt_at_step_41(model, batch):
        calls["n"] += 1
        if calls["n"] == 41:
            raise KeyboardInterrupt
        return classification_loss(model, batch)

    monkeypatch.setattr(stage, "classification_loss", interrupt_at_step_41)
    with pytest.raises(KeyboardInterrupt):
        stage.run(tiny_run_config, ws, quiet())
    monkeypatch.setattr(stage, "classification_loss", classification_loss)
    summary = stage.run(tiny_run_config, ws, quiet()).summary
    assert summary["resumed_from_step"] == 40
    expected = [r["loss"] for r in train_rows(straight_ws)]
    assert [r["loss"] for r in train_rows(ws)] == pytest.approx(expected, abs=1e-6)

    # A changed setting is a different run: old checkpoints are dropped, training restarts.
    tiny_run_config.train.lr = 1e-3
    summary = stage.run(tiny_run_config, ws, quiet()).summary
    assert summary["resumed_from_step"] is None and summary["model_version"] == 2
