"""The `train` stage: tokenizer, encoder classifier, training loop, export, registry.

Reads `data/clean/*.parquet`; writes `train/tokenizer.json`, `train/metrics.jsonl`,
`train/eval.parquet`, `train/checkpoints/`, `train/model/` and registers the model as the
`production` version of `train.model_name`. An interrupted run (Ctrl-C, crash) resumes from
its newest checkpoint when config, data and tokenizer are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from rich.console import Console

from lmforge.config import RunConfig
from lmforge.models import EncoderClassifier, EncoderConfig, save_model_dir
from lmforge.pipeline import StageResult
from lmforge.registry import ModelRegistry
from lmforge.text.tokenizer import (
    PAD_ID,
    encode_texts,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from lmforge.train.baseline import tfidf_baseline
from lmforge.train.checkpoint import latest_checkpoint, read_state
from lmforge.train.classify import (
    class_report,
    classification_loss,
    make_evaluator,
    predict_classes,
)
from lmforge.train.data import (
    ClassificationBatches,
    clean_shards,
    fixed_batches,
    load_train_data,
    write_docs_parquet,
)
from lmforge.train.trainer import Trainer, TrainerSettings
from lmforge.workspace import Workspace, hash_file

EVAL_BATCH_SIZE = 128


def stage_inputs(cfg: RunConfig, ws: Workspace) -> list[Path]:
    return clean_shards(ws)


def training_config_hash(cfg: RunConfig) -> str:
    """Hash of what decides the weights; resume ignores `threads` (speed only) and `baseline`."""
    section = cfg.train.model_dump(mode="json")
    section.pop("threads", None)
    section.pop("baseline", None)  # the floor is measured beside the model, not inside it
    return hashlib.sha256(json.dumps(section, sort_keys=True).encode()).hexdigest()[:16]


def run(cfg: RunConfig, ws: Workspace, console: Console) -> StageResult:
    started = time.perf_counter()
    tc = cfg.train
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    out = ws.stage_dir("train")
    data = load_train_data(ws, tc.eval_fraction, tc.seed)
    class_of = {label: i for i, label in enumerate(data.labels)}
    console.print(
        f"{len(data.train)} train / {len(data.eval)} eval documents, "
        f"{len(data.labels)} labels: {', '.join(data.labels)}"
    )

    # A checkpoint is only valid with the exact tokenizer it was trained with: reuse the saved
    # file when the newest checkpoint names its hash, else train afresh (same texts give the
    # same file) and let the trainer drop checkpoints that name another.
    base_meta = {"config_hash": training_config_hash(cfg), "data_hash": data.data_hash}
    tok_path = out / "tokenizer.json"
    tokenizer = None
    latest = latest_checkpoint(out / "checkpoints")
    if latest is not None and tok_path.is_file():
        meta = {**base_meta, "tokenizer_hash": hash_file(tok_path)[:16]}
        if read_state(latest).get("meta") == meta:
            tokenizer = load_tokenizer(tok_path)
    if tokenizer is None:
        tokenizer = train_tokenizer(
            data.train.texts, tc.tokenizer.vocab_size, tc.tokenizer.min_frequency
        )
        save_tokenizer(tokenizer, tok_path)
    run_meta = {**base_meta, "tokenizer_hash": hash_file(tok_path)[:16]}

    max_len = tc.model.max_len
    train_ids = encode_texts(tokenizer, data.train.texts, max_len)
    eval_ids = encode_texts(tokenizer, data.eval.texts, max_len)
    eval_classes = [class_of[x] for x in data.eval.labels]
    batches = ClassificationBatches(
        train_ids, [class_of[x] for x in data.train.labels], tc.batch_size, tc.seed, PAD_ID
    )
    eval_batches = fixed_batches(eval_ids, eval_classes, EVAL_BATCH_SIZE, PAD_ID)
    eval_path = write_docs_parquet(data.eval, out / "eval.parquet")

    torch.manual_seed(tc.seed)  # same initial weights and dropout stream for the same seed
    model = EncoderClassifier(
        EncoderConfig(
            vocab_size=tokenizer.get_vocab_size(),
            n_classes=len(data.labels),
            pad_id=PAD_ID,
            **tc.model.model_dump(),
        )
    )
    n_params = model.num_parameters()
    console.print(
        f"encoder {tc.model.n_layers}x{tc.model.d_model}, {n_params / 1e6:.2f}M params, "
        f"vocab {tokenizer.get_vocab_size()}, {tc.max_steps} steps of {tc.batch_size}"
    )
    trainer = Trainer(
        model,
        classification_loss,
        batches,
        TrainerSettings.from_config(tc),
        out,
        evaluate=make_evaluator(eval_batches),
        console=console,
        run_meta=run_meta,
    )
    result = trainer.fit()

    baseline = None
    if tc.baseline:
        baseline = tfidf_baseline(
            data.train.texts, data.train.labels, data.eval.texts, data.eval.labels
        )
    pred, gold, eval_loss = predict_classes(model, eval_batches)
    report = class_report(pred, gold, data.labels)
    model_dir = save_model_dir(out / "model", model, tokenizer, data.labels)
    summary = {
        "steps": result.steps,
        "final_loss": result.final_loss,
        "eval_accuracy": report["eval_accuracy"],
        "majority_class_accuracy": report["majority_class_accuracy"],
        "tokens_per_second": result.tokens_per_second,
        "seconds": time.perf_counter() - started,
        "train_seconds": result.train_seconds,
        "eval_loss": eval_loss,
        "macro_f1": report["macro_f1"],
        "per_class": report["per_class"],
        "labels": data.labels,
        "n_train": len(data.train),
        "n_eval": len(data.eval),
        "params": n_params,
        "precision": tc.precision,
        "resumed_from_step": result.resumed_from,
        "model_name": tc.model_name,
        "baseline_accuracy": baseline["accuracy"] if baseline else None,
        "baseline": baseline,
    }
    registry = ModelRegistry(ws.registry_dir)
    version = registry.register(
        tc.model_name,
        model_dir,
        metrics={
            k: summary[k]
            for k in ("eval_accuracy", "majority_class_accuracy", "macro_f1", "final_loss", "steps")
        },
        tags=run_meta,
        alias="production",
    )
    summary["model_version"] = version.version
    floor = f", TF-IDF+LR floor {baseline['accuracy']:.3f}" if baseline else ""
    console.print(
        f"eval accuracy {report['eval_accuracy']:.3f} (majority class "
        f"{report['majority_class_accuracy']:.3f}{floor}), "
        f"registered {tc.model_name} v{version.version}"
    )
    # The registered copy is an output too: a deleted registry makes the stage run again.
    outputs = [
        tok_path,
        trainer.metrics_path,
        eval_path,
        *sorted(model_dir.iterdir()),
        *sorted(version.path.iterdir()),
    ]
    return StageResult(summary=summary, outputs=outputs)
