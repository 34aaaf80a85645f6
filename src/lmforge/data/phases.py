"""The cleaning run as phases over shards, each resumable on its own.

    ingest    (driver)  read every source in order into input shards of `shard_docs` records
    filter    (shards)  normalise, rule filters, language, PII masking
    fit       (driver)  on a deterministic sample: character LM + anomaly thresholds per
                        language, and the learned noise model on the rules' decisions
    score     (shards)  drop anomalies and learned noise; hash survivors for dedup
    dedup     (driver)  exact and near-duplicate clusters over all survivors; the first
                        document read of a cluster stays
    finalize  (shards)  write clean and rejected shards

Shard phases are pure functions of their input shard and the fitted artifacts, so a shard
redone after a crash is byte-identical to the one an uninterrupted run would have written,
whatever executor or number of workers runs it. A phase's per-shard JSON marker is
written last; a shard with a marker is never redone.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.config import DataConfig
from lmforge.data.document import Document
from lmforge.data.steps.base import PipelineStep, StepStats
from lmforge.data.workfiles import (
    WORK_REJECTED_SCHEMA,
    RejectedRows,
    docs_table,
    read_array,
    read_docs,
    read_marker,
    shard_name,
    write_array,
    write_marker,
    write_table,
)
from lmforge.data.writer import CLEAN_SCHEMA, REJECTED_SCHEMA
from lmforge.errors import ConfigError, InputDataError
from lmforge.workspace import atomic_write_json, read_json

if TYPE_CHECKING:
    from lmforge.data.minhash import ShingleSets

# Rule steps whose rejections are the learned noise model's weak "noisy" labels. Reading
# errors are not text, and a language the config leaves out is noise for this corpus.
WEAK_NOISE_STEPS = frozenset(
    {
        "length",
        "letter_ratio",
        "mojibake",
        "repetition",
        "boilerplate",
        "gibberish",
        "stopwords",
        "language",
    }
)


@dataclass(frozen=True)
class RunPaths:
    out: Path

    @property
    def work(self) -> Path:
        return self.out / "_work"

    def phase(self, name: str) -> Path:
        return self.work / name

    @property
    def clean(self) -> Path:
        return self.out / "clean"

    @property
    def rejected(self) -> Path:
        return self.out / "rejected"

    @property
    def stats(self) -> Path:
        return self.out / "stats.json"


def load_cfg(cfg_json: str) -> DataConfig:
    return DataConfig.model_validate_json(cfg_json)


# ---------------------------------------------------------------- filter


def _pii_key(cfg: DataConfig) -> str | None:
    if cfg.pii.mode != "pseudonym":
        return None
    key = os.environ.get(cfg.pii.key_env)
    if not key:
        raise ConfigError(
            f"data.pii.mode=pseudonym needs a secret key in the environment variable "
            f"{cfg.pii.key_env}; export it (e.g. `export {cfg.pii.key_env}=$(openssl rand "
            "-hex 32)`) or choose another mode"
        )
    return key


def rule_steps(cfg: DataConfig) -> list[PipelineStep]:
    """The per-document steps of the filter phase, in order."""
    from lmforge.data.steps.chrome import ChromeTrimmer
    from lmforge.data.steps.language import LanguageFilter
    from lmforge.data.steps.normalize import Normalizer
    from lmforge.data.steps.quality import (
        BoilerplateFilter,
        GibberishFilter,
        LengthFilter,
        LetterRatioFilter,
        MojibakeFilter,
        RepetitionFilter,
        StopwordFilter,
    )

    steps: list[PipelineStep] = [
        Normalizer(),
        ChromeTrimmer(),
        LengthFilter(cfg.min_chars, cfg.max_chars),
        LetterRatioFilter(cfg.min_letter_ratio),
        MojibakeFilter(),
        RepetitionFilter(cfg.max_repeated_ngram_ratio),
        BoilerplateFilter(),
        GibberishFilter(),
        StopwordFilter(),
        LanguageFilter(cfg.languages),
    ]
    # PII is masked before dedup: copies that differ only in a planted phone number or
    # e-mail are the same text once masked.
    if cfg.pii.enabled:
        steps.append(pii_step(cfg))
    return steps


def pii_step(cfg: DataConfig) -> PipelineStep:
    from lmforge.data.steps.pii import PiiMasker

    batch_finder = None
    if "NAME" in cfg.pii.types:
        from lmforge.data.names.batch import find_person_names_batch

        batch_finder = find_person_names_batch
    types = [t for t in cfg.pii.types if t != "NAME"]
    return PiiMasker(
        mode=cfg.pii.mode, key=_pii_key(cfg), types=types, batch_name_finder=batch_finder
    )


def _shard_start(out: str, phase: str, index: int) -> tuple[RunPaths, Path, dict | None]:
    """Paths of a shard phase and its marker, if the shard is already done."""
    paths = RunPaths(Path(out))
    folder = paths.phase(phase)
    return paths, folder, read_marker(folder, index)


def _driver_start(out: str, phase: str) -> tuple[RunPaths, Path, Path, dict | None]:
    """Paths of a driver phase, its `_done.json`, and the summary stored there if it ran."""
    paths = RunPaths(Path(out))
    folder = paths.phase(phase)
    done_path = folder / "_done.json"
    return paths, folder, done_path, read_json(done_path) if done_path.is_file() else None


def filter_shard(out: str, index: int, cfg_json: str) -> dict[str, Any]:
    paths, folder, done = _shard_start(out, "filter", index)
    if done is not None:
        return done
    cfg = load_cfg(cfg_json)
    rejected = RejectedRows()
    name = shard_name(index)
    rows = read_docs(paths.phase("ingest") / f"{name}.parquet")

    def documents():
        for doc, malformed in rows:
            if malformed is None:
                yield doc
            else:
                rejected.add(doc, "read", malformed)

    steps = rule_steps(cfg)
    stream = documents()
    for step in steps:
        stream = step.run(stream, rejected.add)
    kept = list(stream)
    write_table(folder / f"{name}.parquet", docs_table(kept))
    write_table(folder / f"{name}.rejected.parquet", rejected.table())
    marker = {
        "rows": len(kept),
        "rejected": len(rejected),
        "steps": [s.stats.as_dict() for s in steps],
    }
    write_marker(folder, index, marker)
    return marker


# ---------------------------------------------------------------- fit


def _strided(total: int, limit: int) -> int:
    return max(1, -(-total // limit))


def _sample_kept(paths: RunPaths, shards: int, limit: int) -> tuple[list[str], list[str]]:
    """Every k-th kept document's judged text and language, over all shards in order."""
    folder = paths.phase("filter")
    total = sum(read_marker(folder, i)["rows"] for i in range(shards))
    stride = _strided(total, limit)
    texts: list[str] = []
    langs: list[str] = []
    seen = 0
    for i in range(shards):
        table = pq.read_table(
            folder / f"{shard_name(i)}.parquet", columns=["text", "content", "lang"]
        )
        text, content, lang = (table.column(c).to_pylist() for c in ("text", "content", "lang"))
        for j in range(table.num_rows):
            if (seen + j) % stride == 0:
                texts.append(text[j] if content[j] is None else content[j])
                langs.append(lang[j] or "other")
        seen += table.num_rows
    return texts, langs


def _sample_rejected(paths: RunPaths, shards: int, limit: int) -> list[str]:
    """Every k-th document the quality rules rejected (the weak noisy labels)."""
    folder = paths.phase("filter")
    judged: list[str] = []
    for i in range(shards):
        table = pq.read_table(
            folder / f"{shard_name(i)}.rejected.parquet", columns=["step", "judged"]
        )
        steps, texts = table.column("step").to_pylist(), table.column("judged").to_pylist()
        judged.extend(t for s, t in zip(steps, texts, strict=True) if s in WEAK_NOISE_STEPS and t)
    stride = _strided(len(judged), limit)
    return judged[::stride]


def _read_labelled(path: str) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    file = Path(path)
    if not file.is_file():
        raise InputDataError(f"data.noise_model.labelled: file not found: {path}")
    with open(file, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, noisy = row["text"], row["noisy"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputDataError(
                    f"{path} line {n}: expected a JSON object with `text` and `noisy`"
                ) from None
            if not isinstance(text, str) or not isinstance(noisy, bool):
                raise InputDataError(
                    f"{path} line {n}: `text` must be a string and `noisy` true or false"
                )
            out.append((text, noisy))
    return out


MIN_WEAK_LABELS = 50  # fewer noisy examples than this teach the model nothing useful


def fit_models(out: str, shards: int, cfg: DataConfig) -> dict[str, Any]:
    """Fit the anomaly detector and the noise model; returns (and stores) a summary."""
    paths, folder, done_path, done = _driver_start(out, "fit")
    if done is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary: dict[str, Any] = {"anomaly": None, "noise_model": None}
    need_kept = cfg.anomaly.enabled or cfg.noise_model.enabled
    limit = max(cfg.anomaly.sample_docs, cfg.noise_model.sample_docs)
    texts, langs = _sample_kept(paths, shards, limit) if need_kept else ([], [])
    if cfg.anomaly.enabled and texts:
        from lmforge.data.anomaly import AnomalyDetector, CharLanguageModel, batch_features

        stride = _strided(len(texts), cfg.anomaly.sample_docs)
        sample, groups = texts[::stride], langs[::stride]
        lm = CharLanguageModel.fit(sample)
        feats = batch_features(sample, lm)
        kwargs = {} if cfg.anomaly.k is None else {"k": cfg.anomaly.k}
        detector = AnomalyDetector.fit(feats, groups, **kwargs)
        atomic_write_json(folder / "lm.json", lm.to_dict())
        atomic_write_json(folder / "anomaly.json", detector.to_dict())
        summary["anomaly"] = {"sample_docs": len(sample), "thresholds": detector.thresholds()}
    if cfg.noise_model.enabled:
        summary["noise_model"] = _fit_noise_model(paths, shards, cfg, texts)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    atomic_write_json(done_path, summary)
    return summary


def _fit_noise_model(
    paths: RunPaths, shards: int, cfg: DataConfig, kept: list[str]
) -> dict[str, Any]:
    from lmforge.data.noise_model import NoiseModel

    ncfg = cfg.noise_model
    noisy = _sample_rejected(paths, shards, ncfg.sample_docs)
    clean = kept[:: _strided(len(kept), ncfg.sample_docs)]
    labelled = _read_labelled(ncfg.labelled) if ncfg.labelled else []
    if len(noisy) < MIN_WEAK_LABELS or len(clean) < MIN_WEAK_LABELS:
        return {
            "skipped": f"too few weak labels ({len(noisy)} noisy, {len(clean)} clean; "
            f"at least {MIN_WEAK_LABELS} of each are needed)"
        }
    # Hand labels (if any) outweigh weak ones: they are what the rules should have said.
    model = NoiseModel.fit(
        clean + noisy,
        [False] * len(clean) + [True] * len(noisy),
        seed=ncfg.seed,
        labelled=labelled,
    )
    if ncfg.threshold is not None:
        model.threshold = ncfg.threshold
    model.save(paths.phase("fit") / "noise_model")
    return {
        "weak_clean": len(clean),
        "weak_noisy": len(noisy),
        "labelled": len(labelled),
        "threshold": round(float(model.threshold), 4),
        "held_out_weak_labels": model.fit_report,
    }


# ---------------------------------------------------------------- score

_MODELS: dict[str, Any] = {}  # fitted models, loaded once per worker process


def _models(paths: RunPaths, cfg: DataConfig) -> dict[str, Any]:
    # Keyed by the fit's own summary too: a later run into the same folder (another config)
    # refits, and a worker process that served the first run must not reuse its models.
    done = paths.phase("fit") / "_done.json"
    stamp = done.read_text(encoding="utf-8") if done.is_file() else ""
    key = f"{paths.out.resolve()}\x00{stamp}"
    if key in _MODELS:
        return _MODELS[key]
    folder = paths.phase("fit")
    models: dict[str, Any] = {"lm": None, "anomaly": None, "noise": None, "hasher": None}
    if (folder / "anomaly.json").is_file():
        from lmforge.data.anomaly import AnomalyDetector, CharLanguageModel

        models["lm"] = CharLanguageModel.from_dict(read_json(folder / "lm.json"))
        models["anomaly"] = AnomalyDetector.from_dict(read_json(folder / "anomaly.json"))
    if cfg.noise_model.enabled and any(folder.glob("noise_model*")):
        from lmforge.data.noise_model import NoiseModel

        models["noise"] = NoiseModel.load(folder / "noise_model")
    if cfg.near_dedup.enabled:
        models["hasher"] = minhasher(cfg)
    _MODELS.clear()  # one run per process at a time
    _MODELS[key] = models
    return models


def minhasher(cfg: DataConfig):
    from lmforge.data.minhash import MinHasher, MinHashParams

    n = cfg.near_dedup
    return MinHasher(
        MinHashParams(
            num_perm=n.num_perm,
            bands=n.bands,
            char_ngram=n.char_ngram,
            word_ngram=n.word_ngram,
            threshold=n.threshold,
            seed=n.seed,
        )
    )


def score_shard(out: str, index: int, cfg_json: str) -> dict[str, Any]:
    paths, folder, done = _shard_start(out, "score", index)
    if done is not None:
        return done
    cfg = load_cfg(cfg_json)
    models = _models(paths, cfg)
    name = shard_name(index)
    docs = [doc for doc, _ in read_docs(paths.phase("filter") / f"{name}.parquet")]
    rejected = RejectedRows()
    anomaly, learned = StepStats("anomaly"), StepStats("noise_model")
    clock = time.perf_counter

    if models["anomaly"] is not None:
        from lmforge.data.anomaly import batch_features

        start = clock()
        anomaly.docs_in = len(docs)
        kept = []
        if docs:
            feats = batch_features([d.judged_text for d in docs], models["lm"])
            reasons = models["anomaly"].flag(feats, [d.lang or "other" for d in docs])
            for doc, reason in zip(docs, reasons, strict=True):
                if reason is None:
                    kept.append(doc)
                else:
                    anomaly.dropped[reason] += 1
                    rejected.add(doc, "anomaly", reason)
        docs = kept
        anomaly.docs_out = len(docs)
        anomaly.seconds = clock() - start
    if models["noise"] is not None:
        start = clock()
        learned.docs_in = len(docs)
        kept = []
        if docs:
            model = models["noise"]
            probs = model.predict_proba([d.judged_text for d in docs])
            for doc, p in zip(docs, probs, strict=True):
                if p < model.threshold:
                    kept.append(doc)
                else:
                    learned.dropped["learned_noise"] += 1
                    rejected.add(doc, "noise_model", "learned_noise")
        docs = kept
        learned.docs_out = len(docs)
        learned.seconds = clock() - start

    start = clock()
    from lmforge.text.hashing import dedup_key

    keys = np.array([dedup_key(d.text) for d in docs], dtype=np.uint64)
    write_array(folder / f"{name}.keys.npy", keys)
    if models["hasher"] is not None:
        texts = [d.text for d in docs]
        if cfg.near_dedup.verify == "exact":
            sigs, sets = models["hasher"].sketch(texts)
            write_array(folder / f"{name}.shingles.npy", sets.fingerprints)
            write_array(folder / f"{name}.shingle_counts.npy", np.diff(sets.offsets))
        else:
            sigs = models["hasher"].signatures(texts)
        write_array(folder / f"{name}.sig.npy", sigs)
    hash_seconds = clock() - start
    write_table(folder / f"{name}.parquet", docs_table(docs))
    write_table(folder / f"{name}.rejected.parquet", rejected.table())
    steps = [s.as_dict() for s in (anomaly, learned) if s.docs_in or s.seconds]
    marker = {"rows": len(docs), "steps": steps, "hash_seconds": round(hash_seconds, 4)}
    write_marker(folder, index, marker)
    return marker


# ---------------------------------------------------------------- dedup


def _first_of_equal(keys: np.ndarray) -> np.ndarray:
    """For each row, the smallest row index holding the same key."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    group_first = order[starts]  # stable sort: the first of a run is its smallest index
    first = np.empty_like(order)
    first[order] = np.repeat(group_first, np.diff(np.r_[np.flatnonzero(starts), len(keys)]))
    return first


def _survivor_shingles(score: Path, shards: int, survivors: np.ndarray) -> ShingleSets:
    """The shingle fingerprints the score phase stored, of the given (sorted) rows only; one
    shard's fingerprints are in memory at a time besides the kept ones."""
    from lmforge.data.minhash import ShingleSets

    parts: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    lo = 0
    for i in range(shards):
        counts = read_array(score / f"{shard_name(i)}.shingle_counts.npy")
        keep = np.zeros(len(counts), dtype=bool)
        mine = survivors[(survivors >= lo) & (survivors < lo + len(counts))] - lo
        keep[mine] = True
        fingerprints = read_array(score / f"{shard_name(i)}.shingles.npy")
        parts.append(fingerprints[np.repeat(keep, counts)])
        sizes.append(counts[mine])
        lo += len(counts)
    size = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    return ShingleSets(np.concatenate(parts), np.r_[0, np.cumsum(size)].astype(np.int64))


def dedup_all(out: str, shards: int, cfg: DataConfig) -> dict[str, Any]:
    """Exact then near-duplicate clusters over the survivors of every shard, in read order."""
    paths, folder, done_path, done = _driver_start(out, "dedup")
    if done is not None:
        return done
    score = paths.phase("score")
    started = time.perf_counter()
    rows = [read_marker(score, i)["rows"] for i in range(shards)]
    offsets = np.r_[0, np.cumsum(rows)].astype(np.int64)
    n = int(offsets[-1])
    keys = (
        np.concatenate([read_array(score / f"{shard_name(i)}.keys.npy") for i in range(shards)])
        if n
        else np.zeros(0, np.uint64)
    )
    reason = np.zeros(n, dtype=np.int8)  # 0 kept, 1 exact duplicate, 2 near duplicate
    dup_of = np.arange(n, dtype=np.int64)
    exact_sizes: Counter[int] = Counter()
    if cfg.dedup and n:
        first = _first_of_equal(keys)
        exact = first != np.arange(n)
        reason[exact] = 1
        dup_of[exact] = first[exact]
        exact_sizes = Counter(np.bincount(first)[np.unique(first[exact])].tolist())
    exact_seconds = time.perf_counter() - started

    near_started = time.perf_counter()
    near_sizes: dict[int, int] = {}
    survivors = np.flatnonzero(reason == 0)
    if cfg.near_dedup.enabled and len(survivors) > 1:
        from lmforge.data.minhash import band_keys, cluster_sizes, find_clusters

        sigs = np.concatenate(
            [read_array(score / f"{shard_name(i)}.sig.npy") for i in range(shards)]
        )[survivors]
        sets = (
            _survivor_shingles(score, shards, survivors)
            if cfg.near_dedup.verify == "exact"
            else None
        )
        labels = find_clusters(
            band_keys(sigs, cfg.near_dedup.bands),
            None if sets is not None else sigs,
            cfg.near_dedup.threshold,
            link=cfg.near_dedup.link,
            shingles=sets,
        )
        del sigs, sets
        near = labels != np.arange(len(survivors))
        reason[survivors[near]] = 2
        dup_of[survivors[near]] = survivors[labels[near]]
        near_sizes = cluster_sizes(labels)
    near_seconds = time.perf_counter() - near_started

    dropped = np.flatnonzero(reason > 0)
    ids = _ids_at(score, shards, offsets, np.unique(np.r_[dropped, dup_of[dropped]]))
    for i in range(shards):
        lo, hi = offsets[i], offsets[i + 1]
        mine = dropped[(dropped >= lo) & (dropped < hi)]
        table = pa.table(
            {
                "row": pa.array(mine - lo, pa.int64()),
                "reason": [("exact_duplicate", "near_duplicate")[reason[j] - 1] for j in mine],
                "duplicate_of": [ids[int(dup_of[j])] for j in mine],
            }
        )
        write_table(folder / f"{shard_name(i)}.parquet", table)
    n_exact, n_near = int((reason == 1).sum()), int((reason == 2).sum())
    summary = {
        "offsets": offsets.tolist(),
        "steps": [
            _step_dict("dedup", n, n - n_exact, {"exact_duplicate": n_exact}, exact_seconds),
            _step_dict(
                "near_dedup",
                n - n_exact,
                n - n_exact - n_near,
                {"near_duplicate": n_near},
                near_seconds,
            ),
        ],
        "cluster_sizes": {
            "exact": {str(k): v for k, v in sorted(exact_sizes.items())},
            "near": {str(k): v for k, v in sorted(near_sizes.items())},
        },
    }
    atomic_write_json(done_path, summary)
    return summary


def _step_dict(name: str, docs_in: int, docs_out: int, dropped: dict[str, int], seconds: float):
    stats = StepStats(name, docs_in=docs_in, docs_out=docs_out, seconds=seconds)
    stats.dropped.update({k: v for k, v in dropped.items() if v})
    return stats.as_dict()


def _ids_at(folder: Path, shards: int, offsets: np.ndarray, wanted: np.ndarray) -> dict[int, str]:
    """Document ids at the given global row numbers, reading only the shards that hold them."""
    out: dict[int, str] = {}
    for i in range(shards):
        lo, hi = offsets[i], offsets[i + 1]
        mine = wanted[(wanted >= lo) & (wanted < hi)]
        if len(mine):
            column = pq.read_table(folder / f"{shard_name(i)}.parquet", columns=["id"]).column("id")
            for j, doc_id in zip(mine, column.take(pa.array(mine - lo)).to_pylist(), strict=True):
                out[int(j)] = doc_id
    return out


# ---------------------------------------------------------------- finalize


def finalize_shard(out: str, index: int, cfg_json: str) -> dict[str, Any]:
    paths, folder, done = _shard_start(out, "finalize", index)
    if done is not None:
        return done
    name = shard_name(index)
    drops = pq.read_table(paths.phase("dedup") / f"{name}.parquet")
    drop_at = dict(
        zip(
            drops.column("row").to_pylist(),
            zip(
                drops.column("reason").to_pylist(),
                drops.column("duplicate_of").to_pylist(),
                strict=True,
            ),
            strict=True,
        )
    )
    clean: list[Document] = []
    dedup_rejected = RejectedRows()
    for row, (doc, _) in enumerate(read_docs(paths.phase("score") / f"{name}.parquet")):
        hit = drop_at.get(row)
        if hit is None:
            clean.append(doc)
        else:
            doc.meta["duplicate_of"] = hit[1]
            dedup_rejected.add(
                doc, "dedup" if hit[0] == "exact_duplicate" else "near_dedup", hit[0]
            )
    rejected = (
        pa.concat_tables(
            [
                pq.read_table(
                    paths.phase("filter") / f"{name}.rejected.parquet", schema=WORK_REJECTED_SCHEMA
                ),
                pq.read_table(
                    paths.phase("score") / f"{name}.rejected.parquet", schema=WORK_REJECTED_SCHEMA
                ),
                dedup_rejected.table(),
            ]
        )
        .select(REJECTED_SCHEMA.names)
        .cast(REJECTED_SCHEMA)
    )
    clean_table = docs_table(clean).select(CLEAN_SCHEMA.names).cast(CLEAN_SCHEMA)
    write_table(paths.rejected / f"{name}.parquet", rejected)
    write_table(paths.clean / f"{name}.parquet", clean_table)
    languages = Counter(d.lang or "und" for d in clean)
    marker = {"clean": len(clean), "rejected": rejected.num_rows, "languages": dict(languages)}
    write_marker(folder, index, marker)
    return marker


__all__ = [
    "RunPaths",
    "dedup_all",
    "filter_shard",
    "finalize_shard",
    "fit_models",
    "rule_steps",
    "score_shard",
]
