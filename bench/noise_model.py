"""Measure the anomaly detector and the learned noise model on two demo corpora.

    python bench/noise_model.py --docs 20000

Generates a training corpus (--train-seed) and a test corpus (--test-seed) and runs the rule
line (`clean_sources`, its own anomaly/noise-model steps switched off) on both; nothing is
tuned on the test corpus. On the training corpus: a character LM and the anomaly thresholds
are fitted on the kept documents, the noise model on weak labels (rule-rejected = noisy,
kept = clean, anomalies = noisy). On the test corpus it reports, against the ground truth's
*removal* kinds (html_junk, too_short, gibberish, wrong_language, spam; duplicates, pii and
mojibake are other steps' job and count as not noisy here):

- kept documents: precision/recall of the anomaly flags and the model's drops, and the share
  of clean documents each would remove;
- rule-rejected documents: how many each would have caught on its own (recall by kind and
  by rule step), and how many of the dedup-rejected copies (clean text) it would flag;
- leave one kind out: the model trained without the rejected documents of one removal kind,
  scored on that kind of the test corpus (does it learn noise or memorise the rules?);
- a sweep of the detector's k; the fitted thresholds; features, LM and model speeds.

Prints ONE JSON object. Rejected texts are stored as read, so they are normalised and
PII-masked here first: the form the rules judged and the kept documents have.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from rich.console import Console

from lmforge.config import CorpusConfig, DataConfig
from lmforge.data.anomaly import AnomalyDetector, CharLanguageModel, batch_features
from lmforge.data.clean import clean_sources
from lmforge.data.evaluate import REMOVAL_KINDS, load_ground_truth
from lmforge.data.noise_model import NoiseModel, evaluate
from lmforge.data.phases import WEAK_NOISE_STEPS
from lmforge.data.steps.language import detect_language
from lmforge.data.steps.normalize import normalize_text
from lmforge.demo import corpus_sources, generate_corpus

try:  # the PII package replaced the single step module in the sharded line
    from lmforge.data.pii.masking import mask_pii
except ImportError:  # pragma: no cover - older layout
    from lmforge.data.steps.pii import mask_pii  # type: ignore[no-redef]

# Rule steps that judge the text; what they reject is the weak "noisy" label (the same
# steps the cleaning line trains its noise model on).
TEXT_RULE_STEPS = WEAK_NOISE_STEPS
DEDUP_STEPS = frozenset({"dedup", "near_dedup"})
K_SWEEP = (4.0, 5.0, 6.0, 7.0, 8.0)


@dataclass
class Corpus:
    kept_texts: list[str]
    kept_langs: list[str]
    kept_noisy: np.ndarray  # ground truth: carries a removal kind
    kept_clean: np.ndarray  # ground truth: no noise kind at all
    rej_texts: list[str]  # rejected by a text rule, normalised and masked
    rej_langs: list[str]
    rej_steps: list[str]
    rej_kinds: list[tuple[str, ...]]  # ground-truth removal kinds
    dup_texts: list[str]  # rejected as a copy: clean text


def rule_only_config() -> DataConfig:
    """The default DataConfig with the fitted steps off, so only the rules decide."""
    off = {
        name: {"enabled": False}
        for name in ("anomaly", "noise_model")
        if name in DataConfig.model_fields
    }
    return DataConfig(**off)


def _rows(folder: Path, columns: list[str]) -> list[dict[str, Any]]:
    available = set(pq.read_schema(next(iter(sorted(folder.glob("*.parquet"))))).names)
    return pq.read_table(folder, columns=[c for c in columns if c in available]).to_pylist()


def _judged_form(text: str) -> str:
    return mask_pii(normalize_text(text)[0])[0]


def build_corpus(root: Path, docs: int, seed: int, noise_rate: float, reuse: bool) -> Corpus:
    folder = root / f"corpus-{seed}"
    out = root / f"data-{seed}"
    truth_path = folder / "ground_truth.jsonl"
    if not (reuse and truth_path.is_file() and (out / "stats.json").is_file()):
        generate_corpus(folder, CorpusConfig(docs=docs, noise_rate=noise_rate, seed=seed))
        clean_sources(corpus_sources(folder), out, rule_only_config(), Console(quiet=True))
    truth = load_ground_truth(truth_path)

    def removal(doc_id: str) -> tuple[str, ...]:
        entry = truth.get(doc_id)
        return tuple(k for k in entry.noise if k in REMOVAL_KINDS) if entry else ()

    kept = _rows(out / "clean", ["id", "text", "lang"])
    rejected = _rows(out / "rejected", ["id", "text", "step"])
    text_rejected = [r for r in rejected if r["step"] in TEXT_RULE_STEPS]
    rej_texts = [_judged_form(r["text"]) for r in text_rejected]
    return Corpus(
        kept_texts=[r["text"] for r in kept],
        kept_langs=[r.get("lang") or detect_language(r["text"]) for r in kept],
        kept_noisy=np.array([bool(removal(r["id"])) for r in kept], dtype=bool),
        kept_clean=np.array(
            [r["id"] in truth and not truth[r["id"]].noise for r in kept], dtype=bool
        ),
        rej_texts=rej_texts,
        rej_langs=[detect_language(t) for t in rej_texts],
        rej_steps=[r["step"] for r in text_rejected],
        rej_kinds=[removal(r["id"]) for r in text_rejected],
        dup_texts=[_judged_form(r["text"]) for r in rejected if r["step"] in DEDUP_STEPS],
    )


def _round(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v, digits) for v in value]
    return value


def _rate(mask: np.ndarray, where: np.ndarray | None = None) -> float | None:
    part = mask if where is None else mask[where]
    return round(float(part.mean()), 5) if len(part) else None


def _by(labels: Sequence[str], caught: np.ndarray) -> dict[str, dict[str, Any]]:
    out = {}
    for label in sorted(set(labels)):
        rows = np.array([x == label for x in labels])
        out[label] = {"docs": int(rows.sum()), "caught": _rate(caught, rows)}
    return out


def _by_kind(kinds: Sequence[tuple[str, ...]], caught: np.ndarray) -> dict[str, dict[str, Any]]:
    out = {}
    for kind in sorted(REMOVAL_KINDS):
        rows = np.array([kind in k for k in kinds], dtype=bool)
        if rows.any():
            out[kind] = {"docs": int(rows.sum()), "recall": _rate(caught, rows)}
    return out


def _speed(fn, texts: Sequence[str]) -> float:
    start = time.perf_counter()
    fn(texts)
    return round(len(texts) / (time.perf_counter() - start), 1)


def _flags(detector: AnomalyDetector, features: np.ndarray, langs: Sequence[str]) -> np.ndarray:
    return np.array([r is not None for r in detector.flag(features, langs)], dtype=bool)


def _weak_labels(train: Corpus, anomalies: np.ndarray, skip_kind: str | None = None):
    """Weak training data: kept (clean unless flagged as an anomaly) + text-rule rejected
    (noisy); `skip_kind` leaves out the rejected documents of one ground-truth kind."""
    rejected = [
        t
        for t, kinds in zip(train.rej_texts, train.rej_kinds, strict=True)
        if skip_kind is None or skip_kind not in kinds
    ]
    return train.kept_texts + rejected, np.append(anomalies, np.ones(len(rejected), dtype=bool))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000, help="documents per corpus")
    parser.add_argument("--noise-rate", type=float, default=0.37)
    parser.add_argument("--train-seed", type=int, default=0, help="corpus the models fit on")
    parser.add_argument("--test-seed", type=int, default=1, help="corpus they are measured on")
    parser.add_argument("--k", type=float, default=None, help="detector k (default: its own)")
    parser.add_argument(
        "--lm-docs", type=int, default=20_000, help="kept documents the character LM fits on"
    )
    parser.add_argument(
        "--no-leave-one-out", action="store_true", help="skip the leave-one-kind-out fits"
    )
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder, kept")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: reuse the corpora and cleaned output already there",
    )
    args = parser.parse_args(argv)
    if args.train_seed == args.test_seed:
        parser.error("--train-seed and --test-seed must differ (nothing is tuned on test data)")

    root = args.keep or Path(tempfile.mkdtemp(prefix="lmforge-noise-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        reuse = args.reuse and args.keep is not None
        train = build_corpus(root, args.docs, args.train_seed, args.noise_rate, reuse)
        test = build_corpus(root, args.docs, args.test_seed, args.noise_rate, reuse)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    # --- fit on the training corpus ---------------------------------------------------------
    started = time.perf_counter()
    stride = max(1, -(-len(train.kept_texts) // args.lm_docs))
    lm = CharLanguageModel.fit(train.kept_texts[::stride])
    lm_fit_s = time.perf_counter() - started
    train_feats = batch_features(train.kept_texts, lm)
    k_kwargs = {} if args.k is None else {"k": args.k}
    started = time.perf_counter()
    detector = AnomalyDetector.fit(train_feats, train.kept_langs, **k_kwargs)
    detector_fit_s = time.perf_counter() - started
    train_anomalies = _flags(detector, train_feats, train.kept_langs)
    texts, noisy = _weak_labels(train, train_anomalies)
    started = time.perf_counter()
    model = NoiseModel.fit(texts, noisy, seed=0)
    model_fit_s = time.perf_counter() - started

    # --- score the test corpus --------------------------------------------------------------
    speeds = {
        "features_docs_per_s": _speed(lambda t: batch_features(t, lm), test.kept_texts),
        "lm_score_docs_per_s": _speed(lm.score_batch, test.kept_texts),
        "model_predict_docs_per_s": _speed(model.predict_proba, test.kept_texts),
    }
    kept_feats = batch_features(test.kept_texts, lm)
    rej_feats = batch_features(test.rej_texts, lm)
    dup_feats = batch_features(test.dup_texts, lm)
    dup_langs = [detect_language(t) for t in test.dup_texts]
    kept_flags = detector.flag(kept_feats, test.kept_langs)
    kept_anom = np.array([r is not None for r in kept_flags], dtype=bool)
    rej_anom = _flags(detector, rej_feats, test.rej_langs)
    kept_drop = model.predict(test.kept_texts)
    rej_drop = model.predict(test.rej_texts)
    not_noisy = ~test.kept_noisy
    rej_noisy = np.array([bool(k) for k in test.rej_kinds], dtype=bool)

    def kept_block(caught: np.ndarray) -> dict[str, Any]:
        return {
            **evaluate(caught, test.kept_noisy),
            "dropped": int(caught.sum()),
            "not_noisy_removed_rate": _rate(caught, not_noisy),
            "clean_removed_rate": _rate(caught, test.kept_clean),
        }

    def rejected_block(caught: np.ndarray, dup_caught: np.ndarray) -> dict[str, Any]:
        return {
            "recall_on_removal_noise": _rate(caught, rej_noisy),
            "by_kind": _by_kind(test.rej_kinds, caught),
            "by_rule_step": _by(test.rej_steps, caught),
            "dedup_copies_flagged_rate": _rate(dup_caught),
        }

    sweep = {}
    for k in K_SWEEP:
        det_k = AnomalyDetector.fit(train_feats, train.kept_langs, k=k)
        sweep[str(k)] = {
            "kept_flagged_rate": _rate(_flags(det_k, kept_feats, test.kept_langs)),
            "clean_flagged_rate": _rate(
                _flags(det_k, kept_feats, test.kept_langs), test.kept_clean
            ),
            "rejected_noise_recall": _rate(_flags(det_k, rej_feats, test.rej_langs), rej_noisy),
        }

    leave_one_out = {}
    if not args.no_leave_one_out:
        for kind in sorted(REMOVAL_KINDS):
            lo_texts, lo_noisy = _weak_labels(train, train_anomalies, skip_kind=kind)
            lo_model = NoiseModel.fit(lo_texts, lo_noisy, seed=0)
            rows = np.array([kind in k for k in test.rej_kinds], dtype=bool)
            caught = lo_model.predict([t for t, r in zip(test.rej_texts, rows, strict=True) if r])
            leave_one_out[kind] = {
                "test_docs": int(rows.sum()),
                "recall_unseen_kind": _rate(caught),
                "threshold": round(lo_model.threshold, 4),
                "clean_removed_rate": _rate(lo_model.predict(test.kept_texts), test.kept_clean),
            }

    note = None
    if not test.kept_noisy.any():
        note = (
            "the rule line left no removal noise among the test corpus's kept documents, so "
            "kept precision is 0 or undefined by construction; rule_rejected shows what each "
            "model catches on its own"
        )
    result = {
        "docs": args.docs,
        "note": note,
        "train_seed": args.train_seed,
        "test_seed": args.test_seed,
        "noisy_means": sorted(REMOVAL_KINDS),
        "not_counted_as_noisy": ["exact_duplicate", "near_duplicate", "pii", "mojibake"],
        "train": {
            "kept_docs": len(train.kept_texts),
            "text_rule_rejected": len(train.rej_texts),
            "anomalies_used_as_noisy": int(train_anomalies.sum()),
            "lm_fit_docs": len(train.kept_texts[::stride]),
            "lm_fit_s": round(lm_fit_s, 3),
            "detector_fit_s": round(detector_fit_s, 3),
            "model_fit_s": round(model_fit_s, 2),
            "lm_json_kb": round(len(json.dumps(lm.to_dict())) / 1024, 1),
        },
        "test": {
            "kept_docs": len(test.kept_texts),
            "kept_removal_noisy": int(test.kept_noisy.sum()),
            "kept_clean": int(test.kept_clean.sum()),
            "text_rule_rejected": len(test.rej_texts),
            "dedup_rejected": len(test.dup_texts),
        },
        "anomaly": {
            "k": detector.k,
            "fallback_groups": list(detector.fallback),
            "kept": kept_block(kept_anom),
            "kept_reasons": dict(Counter(r for r in kept_flags if r).most_common()),
            "rule_rejected": rejected_block(rej_anom, _flags(detector, dup_feats, dup_langs)),
            "k_sweep": sweep,
            "thresholds": _round(detector.thresholds()),
        },
        "noise_model": {
            "threshold": round(model.threshold, 4),
            "fit_report": _round(model.fit_report),
            "kept": kept_block(kept_drop),
            "rule_rejected": rejected_block(rej_drop, model.predict(test.dup_texts)),
            "leave_one_kind_out": leave_one_out,
        },
        "either": {
            "kept": kept_block(kept_anom | kept_drop),
            "rule_rejected_recall": _rate(rej_anom | rej_drop, rej_noisy),
        },
        "speed": speeds,
    }
    print(json.dumps(_round(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
