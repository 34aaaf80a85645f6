"""The cleaning line: read every source, run the steps, write clean and rejected shards.

    read -> normalize -> length -> letter_ratio -> mojibake -> repetition -> boilerplate
         -> gibberish -> language -> pii -> dedup

Each step yields the documents it keeps; every dropped document goes to the rejected
shards with its step and reason and the text as it was read.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from lmforge.config import DataConfig, SourceConfig
from lmforge.data.document import Document
from lmforge.data.evaluate import evaluate_noise
from lmforge.data.sources import EXTENSIONS, SourceReader, kind_for
from lmforge.data.steps.base import PipelineStep
from lmforge.data.steps.dedup import ExactDedup
from lmforge.data.steps.language import LanguageFilter
from lmforge.data.steps.normalize import Normalizer
from lmforge.data.steps.pii import PLACEHOLDERS, PiiMasker
from lmforge.data.steps.quality import (
    BoilerplateFilter,
    GibberishFilter,
    LengthFilter,
    LetterRatioFilter,
    MojibakeFilter,
    RepetitionFilter,
)
from lmforge.data.steps.read import ReadStep
from lmforge.data.writer import CLEAN_SCHEMA, REJECTED_SCHEMA, ShardWriter
from lmforge.errors import InputDataError
from lmforge.workspace import atomic_write_json


def build_steps(cfg: DataConfig) -> list[PipelineStep]:
    """The steps after reading, in order, as the config asks for them."""
    steps: list[PipelineStep] = [
        Normalizer(),
        LengthFilter(cfg.min_chars, cfg.max_chars),
        LetterRatioFilter(cfg.min_letter_ratio),
        MojibakeFilter(),
        RepetitionFilter(cfg.max_repeated_ngram_ratio),
        BoilerplateFilter(),
        GibberishFilter(),
        LanguageFilter(cfg.languages),
    ]
    # PII is masked before dedup: copies that differ only in a planted phone number or
    # e-mail are the same text once masked.
    if cfg.pii == "mask":
        steps.append(PiiMasker())
    if cfg.dedup:
        steps.append(ExactDedup())
    return steps


def sources_from_paths(paths: list[str]) -> list[SourceConfig]:
    """Sources for command-line inputs: each file's reader from its extension; a folder is
    read file by file."""
    sources = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputDataError(f"input not found: {raw}")
        if path.is_file() and kind_for(path) is None:
            raise InputDataError(
                f"cannot tell how to read {raw} from its extension; supported: "
                f"{', '.join(sorted(EXTENSIONS))} (or a folder of such files)"
            )
        sources.append(SourceConfig(path=str(path.resolve())))
    return sources


class _DocsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} docs/s" if speed else "- docs/s", style="cyan")


def _with_progress(
    docs: Iterable[Document], progress: Progress, read: ReadStep, every: int = 256
) -> Iterator[Document]:
    """Pass documents through, showing how many were read so far and how fast."""
    task = progress.add_task("cleaning", total=None)
    for i, doc in enumerate(docs, start=1):
        if i % every == 0:
            progress.update(task, completed=read.stats.docs_in)
        yield doc
    progress.update(task, completed=read.stats.docs_in)


def clean_sources(
    sources: list[SourceConfig],
    out_dir: Path,
    cfg: DataConfig,
    console: Console | None = None,
    ground_truth: Path | None = None,
) -> dict[str, Any]:
    """Clean `sources` into out_dir/clean, out_dir/rejected and out_dir/stats.json.

    Returns the stats: docs_in (records read, malformed included), docs_out, the funnel
    (per step: in, out, drops by reason, docs/s), PII masks by type, language mix, seconds,
    and, with a ground truth, the noise metrics of `evaluate_noise`.
    """
    if not sources:
        raise InputDataError("no data sources given; list files or folders to clean")
    out_dir = Path(out_dir)
    started = time.perf_counter()
    readers = [SourceReader(src) for src in sources]
    read = ReadStep(readers)
    steps = build_steps(cfg)
    clean = ShardWriter(out_dir / "clean", CLEAN_SCHEMA, cfg.shard_docs)
    rejected = ShardWriter(out_dir / "rejected", REJECTED_SCHEMA, cfg.shard_docs)

    def reject(doc: Document, step: str, reason: str) -> None:
        rejected.add(doc, doc.raw_text, step=step, reason=reason)

    stream: Iterable[Document] = read.run(reject)
    for step in steps:
        stream = step.run(stream, reject)

    languages: Counter[str] = Counter()
    progress = Progress(
        TextColumn("[bold]data"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} docs read"),
        _DocsPerSecond(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )
    with progress:
        for doc in _with_progress(stream, progress, read):
            languages[doc.lang or "und"] += 1
            clean.add(doc, doc.text)
    clean_paths = clean.close()
    rejected_paths = rejected.close()
    seconds = time.perf_counter() - started

    pii = next((s for s in steps if isinstance(s, PiiMasker)), None)
    pii_counts = {k: pii.stats.events[k] for k in PLACEHOLDERS} if pii else {}
    stats: dict[str, Any] = {
        "docs_in": read.stats.docs_in,
        "docs_out": clean.rows,
        "docs_rejected": rejected.rows,
        "docs_malformed": sum(read.stats.dropped.values()),
        "seconds": round(seconds, 3),
        "docs_per_second": round(read.stats.docs_in / seconds, 1) if seconds else None,
        "funnel": [read.stats.as_dict()] + [s.stats.as_dict() for s in steps],
        "pii": pii_counts,
        "pii_docs_masked": pii.stats.events["docs_masked"] if pii else 0,
        "languages": dict(languages.most_common()),
        "sources": read.source_stats(),
        "skipped_files": [f for r in readers for f in r.skipped],
        "shards": {"clean": len(clean_paths), "rejected": len(rejected_paths)},
        "noise_rate_before": None,
        "noise_rate_after": None,
        "clean_docs_lost_rate": None,
    }
    if ground_truth is not None:
        stats.update(evaluate_noise(Path(ground_truth), out_dir / "clean", out_dir / "rejected"))
    atomic_write_json(out_dir / "stats.json", stats)
    return stats
