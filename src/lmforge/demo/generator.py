"""Generate the demo corpus into a folder and describe it in `corpus.json` (docs/demo-corpus.md)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lmforge.config import CorpusConfig, SourceConfig
from lmforge.demo.doc import SOURCES, CorpusDoc
from lmforge.demo.noise import NOISE_KINDS
from lmforge.demo.planner import DocumentPlanner, stream_rng
from lmforge.demo.reviews import LABELS
from lmforge.demo.writers import (
    CSV_FILE,
    POSTS_FILE,
    SQL_TABLE,
    SQLITE_FILE,
    TRUTH_FILE,
    WEB_DIR,
    CorpusFiles,
)
from lmforge.errors import ConfigError, InputDataError
from lmforge.workspace import atomic_write_json

CORPUS_FILE = "corpus.json"
FORMAT = "lmforge-demo-corpus/1"
RECORD_TEMPLATE = "{product} ({category}), {channel}: {comment}"
MALFORMED_RATE = 0.002  # share of posts.jsonl lines that are truncated JSON
_PROGRESS_EVERY = 1000


def source_entries() -> list[dict[str, Any]]:
    """The `data.sources` entries that read a generated corpus (paths relative to it)."""
    configs = (
        SourceConfig(path=WEB_DIR, kind="html", name="web"),
        SourceConfig(path=POSTS_FILE, kind="jsonl", name="posts"),
        SourceConfig(
            path=CSV_FILE,
            kind="csv",
            name="records_csv",
            text_field="comment",
            template=RECORD_TEMPLATE,
        ),
        SourceConfig(
            path=SQLITE_FILE,
            kind="sqlite",
            name="records_sql",
            table=SQL_TABLE,
            text_field="comment",
            template=RECORD_TEMPLATE,
        ),
    )
    return [c.model_dump(mode="json", exclude_none=True) for c in configs]


class CorpusStats:
    """Counts by source, language, label and noise kind; key order is fixed for stable JSON."""

    def __init__(self) -> None:
        self.docs = 0
        self.noisy = 0
        self.source = dict.fromkeys(SOURCES, 0)
        self.lang = dict.fromkeys(("zh", "en", "other"), 0)
        self.label = dict.fromkeys(LABELS, 0)
        self.noise = dict.fromkeys(NOISE_KINDS, 0)

    def add(self, doc: CorpusDoc) -> None:
        self.docs += 1
        self.source[doc.source] += 1
        self.lang[doc.lang] += 1
        self.label[doc.label] += 1
        self.noisy += bool(doc.noise)
        for kind in doc.noise:
            self.noise[kind] += 1


def _malformed_positions(docs: int) -> list[int]:
    """Document indexes after which a truncated line goes into posts.jsonl."""
    count = max(1 if docs >= 500 else 0, round(docs * MALFORMED_RATE))
    return [int((k + 0.5) * docs / count) for k in range(count)]


def _validated(cfg: CorpusConfig | Mapping[str, Any]) -> CorpusConfig:
    if isinstance(cfg, CorpusConfig):
        return CorpusConfig.model_validate(cfg.model_dump())
    try:
        return CorpusConfig.model_validate(dict(cfg))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"corpus.{field}: {first['msg']}, got {first.get('input')!r}; "
            f"see `lmforge config-schema` for the allowed values"
        ) from None


def generate_corpus(
    out_dir: str | Path,
    cfg: CorpusConfig | Mapping[str, Any],
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write the whole corpus into `out_dir` and return the stats also saved as corpus.json.

    Same parameters, same bytes. `progress(n)` is called with the number of documents done.
    """
    cfg = _validated(cfg)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputDataError(f"corpus folder {out} is a file; pass a folder path instead")
    out.mkdir(parents=True, exist_ok=True)
    planner = DocumentPlanner(cfg)
    stats = CorpusStats()
    pending = _malformed_positions(cfg.docs)[::-1]  # popped from the end, in order
    malformed = 0
    with CorpusFiles(out, stream_rng(cfg.seed, "page")) as files:
        for index in range(cfg.docs):
            doc = planner.build(index)
            files.write_doc(doc)
            stats.add(doc)
            if doc.source == "posts" and pending and index >= pending[-1]:
                pending.pop()
                files.write_malformed_post(planner.malformed_post(malformed))
                malformed += 1
            for done in planner.finished():
                files.write_truth(done)
            if progress is not None and (index + 1) % _PROGRESS_EVERY == 0:
                progress(index + 1)
        for _ in pending:  # no post came after the last position
            files.write_malformed_post(planner.malformed_post(malformed))
            malformed += 1
        for done in planner.drain():
            files.write_truth(done)
    if progress is not None and cfg.docs % _PROGRESS_EVERY:
        progress(cfg.docs)
    result = {
        "format": FORMAT,
        "params": cfg.model_dump(mode="json"),
        "docs": stats.docs,
        "labels": list(LABELS),
        "noisy_docs": stats.noisy,
        "noise_rate": round(stats.noisy / stats.docs, 4),
        "dup_groups": planner.pool.groups,
        "tagged_reviews": planner.tagged_reviews,
        "malformed_lines": malformed,
        "counts": {
            "source": stats.source,
            "lang": stats.lang,
            "label": stats.label,
            "noise": stats.noise,
        },
        "bytes": {**files.sizes, "total": sum(files.sizes.values())},
        "ground_truth": TRUTH_FILE,
        "sources": source_entries(),
    }
    atomic_write_json(out / CORPUS_FILE, result)
    return result


def corpus_sources(corpus_dir: str | Path) -> list[SourceConfig]:
    """The sources that read a generated corpus, with absolute paths (from its corpus.json)."""
    root = Path(corpus_dir).resolve()
    meta_path = root / CORPUS_FILE
    if not meta_path.is_file():
        raise InputDataError(
            f"no {CORPUS_FILE} in {root}: generate the corpus first "
            "(`lmforge run CONFIG --only corpus` or lmforge.demo.generate_corpus)"
        )
    try:
        entries = json.loads(meta_path.read_text(encoding="utf-8"))["sources"]
        return [SourceConfig(**{**e, "path": str(root / e["path"])}) for e in entries]
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise InputDataError(
            f"{meta_path} is not a corpus description ({type(exc).__name__}: {exc}); "
            "regenerate the corpus"
        ) from None
