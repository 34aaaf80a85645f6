"""The cleaning line: read every source, run the phases, write clean and rejected shards.

    read -> normalize -> length -> letter_ratio -> mojibake -> repetition -> boilerplate
         -> gibberish -> stopwords -> language -> pii -> anomaly -> noise_model
         -> dedup (exact) -> near_dedup

`lmforge.data.phases` holds the phases; this module drives them with an executor, shows
progress, and writes OUT/stats.json. A run killed at any moment resumes where it stopped
when called again with the same sources and config, and ends with exactly the output of
an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from lmforge.config import DataConfig, SourceConfig
from lmforge.data.document import Document
from lmforge.data.evaluate import evaluate_model_filters, evaluate_noise
from lmforge.data.executors import Executor, make_executor
from lmforge.data.phases import (
    RunPaths,
    dedup_all,
    filter_shard,
    finalize_shard,
    fit_models,
    rule_steps,
    score_shard,
)
from lmforge.data.sources import EXTENSIONS, SourceReader, kind_for
from lmforge.data.steps.base import PipelineStep
from lmforge.data.steps.read import ReadStep
from lmforge.data.workfiles import docs_table, shard_name, write_table
from lmforge.data.writer import clear_shards
from lmforge.errors import InputDataError
from lmforge.workspace import atomic_write_json, read_json

STATS_VERSION = 2


def build_steps(cfg: DataConfig) -> list[PipelineStep]:
    """The per-document steps (normalise, rules, language, PII), in order."""
    return rule_steps(cfg)


def sources_from_paths(
    paths: list[str], table: str | None = None, query: str | None = None
) -> list[SourceConfig]:
    """Sources for command-line inputs: a file's reader from its extension, a folder read
    file by file, a database URL (with `table` or `query`)."""
    sources = []
    for raw in paths:
        if "://" in raw:
            if not (table or query):
                raise InputDataError(
                    f"database input {raw.split('@')[-1]} needs --table NAME or --query SQL"
                )
            sources.append(SourceConfig(url=raw, table=table, query=query))
            continue
        path = Path(raw)
        if not path.exists():
            raise InputDataError(f"input not found: {raw}")
        if path.is_file() and kind_for(path) is None:
            raise InputDataError(
                f"cannot tell how to read {raw} from its extension; supported: "
                f"{', '.join(sorted(EXTENSIONS))} (or a folder of such files)"
            )
        sources.append(SourceConfig(path=str(path.resolve()), table=table, query=query))
    return sources


# Settings that change how fast a run goes but never what it writes: a run resumed with
# another executor or worker count continues the same work.
_NEUTRAL_SETTINGS = {"executor", "workers", "ground_truth"}


def run_fingerprint(readers: list[SourceReader], cfg: DataConfig) -> str:
    """Identity of a run's output: the config and every input file's size and mtime."""
    files = []
    for reader in readers:
        files.append(reader.src.model_dump(mode="json"))
        for path, _, _ in getattr(reader, "files", []):
            st = path.stat()
            files.append([str(path), st.st_size, st.st_mtime_ns])
    settings = cfg.model_dump(mode="json", exclude=_NEUTRAL_SETTINGS)
    payload = json.dumps([STATS_VERSION, settings, files], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class _DocsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        docs = task.fields.get("docs", 0)
        elapsed = task.elapsed or 0.0
        if not docs or not elapsed:
            return Text("- docs/s", style="cyan")
        return Text(f"{docs / elapsed:,.0f} docs/s", style="cyan")


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[docs]:>10,} docs"),
        _DocsPerSecond(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )


def _ingest(
    readers: list[SourceReader], paths: RunPaths, cfg: DataConfig, progress: Progress
) -> dict[str, Any]:
    """Read every source in order into input shards of `shard_docs` records.

    Resumable: reading is deterministic, so a rerun re-reads and writes only the shards
    that are not there yet.
    """
    folder = paths.phase("ingest")
    done_path = folder / "_done.json"
    if done_path.is_file():
        summary = read_json(done_path)
        task = progress.add_task("read", total=summary["shards"], docs=summary["records"])
        progress.update(task, completed=summary["shards"])
        return summary
    folder.mkdir(parents=True, exist_ok=True)
    read = ReadStep(readers)
    task = progress.add_task("read", total=None, docs=0)
    docs: list[Document] = []
    malformed: list[str | None] = []
    shards = 0

    def flush() -> None:
        nonlocal shards, docs, malformed
        path = folder / f"{shard_name(shards)}.parquet"
        if not path.is_file():
            write_table(path, docs_table(docs, malformed))
        shards += 1
        docs, malformed = [], []
        progress.update(task, completed=shards, docs=read.stats.docs_in)

    def reject(doc: Document, step: str, reason: str) -> None:
        docs.append(doc)
        malformed.append(reason)
        if len(docs) >= cfg.shard_docs:
            flush()

    for doc in read.run(reject):
        docs.append(doc)
        malformed.append(None)
        if len(docs) >= cfg.shard_docs:
            flush()
    if docs or shards == 0:
        flush()
    progress.update(task, total=shards, completed=shards)
    summary = {
        "shards": shards,
        "records": read.stats.docs_in,
        "funnel": read.stats.as_dict(),
        "sources": read.source_stats(),
        "skipped_files": [f for r in readers for f in getattr(r, "skipped", [])],
    }
    atomic_write_json(done_path, summary)
    return summary


def _run_phase(
    name: str,
    fn: Callable[[str, int, str], dict[str, Any]],
    shards: int,
    paths: RunPaths,
    cfg_json: str,
    executor: Executor,
    progress: Progress,
) -> list[dict[str, Any]]:
    from lmforge.data.workfiles import read_marker

    folder = paths.phase(name)
    folder.mkdir(parents=True, exist_ok=True)
    markers: list[dict[str, Any] | None] = [read_marker(folder, i) for i in range(shards)]
    todo = [i for i, m in enumerate(markers) if m is None]
    docs = sum(_marker_docs(m) for m in markers if m is not None)
    task = progress.add_task(name, total=shards, completed=shards - len(todo), docs=docs)

    def done(shard: int, marker: dict[str, Any]) -> None:
        nonlocal docs
        markers[shard] = marker
        docs += _marker_docs(marker)
        progress.update(task, advance=1, docs=docs)

    executor.map(fn, todo, str(paths.out), cfg_json, done)
    return [m for m in markers if m is not None]


def _marker_docs(marker: dict[str, Any]) -> int:
    steps = marker.get("steps") or []
    if steps:
        return int(steps[0].get("docs_in", 0))
    if "rows" in marker:  # a score shard with both learned filters off: it hashed every row
        return int(marker["rows"])
    return int(marker.get("clean", 0)) + int(marker.get("rejected", 0))


def _merge_steps(per_shard: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Sum the per-shard step counters, keeping the step order."""
    merged: dict[str, dict[str, Any]] = {}
    for steps in per_shard:
        for s in steps:
            m = merged.setdefault(
                s["step"],
                {
                    "step": s["step"],
                    "docs_in": 0,
                    "docs_out": 0,
                    "dropped": Counter(),
                    "seconds": 0.0,
                    "events": Counter(),
                },
            )
            m["docs_in"] += s["docs_in"]
            m["docs_out"] += s["docs_out"]
            m["dropped"].update(s.get("dropped", {}))
            m["events"].update(s.get("events", {}))
            m["seconds"] += s.get("seconds") or 0.0
    out = []
    for m in merged.values():
        seconds = m["seconds"]
        entry = {
            "step": m["step"],
            "docs_in": m["docs_in"],
            "docs_out": m["docs_out"],
            "dropped": dict(m["dropped"].most_common()),
            "seconds": round(seconds, 4),
            # CPU time of the step summed over workers: docs/s per core.
            "docs_per_second": round(m["docs_in"] / seconds, 1) if seconds else None,
        }
        if m["events"]:
            entry["events"] = dict(m["events"].most_common())
        out.append(entry)
    return out


def _complete_stats(paths: RunPaths, fingerprint: str) -> dict[str, Any] | None:
    """The stats of a finished run with this fingerprint whose outputs are all there."""
    if not paths.stats.is_file():
        return None
    try:
        stats = read_json(paths.stats)
    except (OSError, ValueError):
        return None
    if stats.get("fingerprint") != fingerprint:
        return None
    shards = stats.get("shards", {}).get("clean", -1)
    for folder in (paths.clean, paths.rejected):
        if any(not (folder / f"{shard_name(i)}.parquet").is_file() for i in range(shards)):
            return None
    return stats


def _prepare(paths: RunPaths, fingerprint: str) -> bool:
    """Set up OUT for this run; True when an interrupted run of the same work resumes."""
    state = paths.work / "state.json"
    if state.is_file():
        try:
            if read_json(state).get("fingerprint") == fingerprint:
                return True
        except (OSError, ValueError):
            pass
    shutil.rmtree(paths.work, ignore_errors=True)
    for folder in (paths.clean, paths.rejected):
        clear_shards(folder)
    paths.stats.unlink(missing_ok=True)
    paths.work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state, {"fingerprint": fingerprint})
    return False


def clean_sources(
    sources: list[SourceConfig],
    out_dir: Path,
    cfg: DataConfig,
    console: Console | None = None,
    ground_truth: Path | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Clean `sources` into out_dir/clean, out_dir/rejected and out_dir/stats.json.

    Returns the stats: docs_in (records read, malformed included), docs_out, the funnel
    (per step: in, out, drops by reason, docs/s per core), PII masks by type, dedup cluster
    sizes, language mix, the fitted anomaly thresholds and noise model, seconds per phase,
    and, with a ground truth, the noise metrics of `evaluate_noise`.
    """
    if not sources:
        raise InputDataError("no data sources given; list files or folders to clean")
    paths = RunPaths(Path(out_dir))
    started = time.perf_counter()
    readers = [SourceReader(src) for src in sources]
    rule_steps(cfg)  # a bad setting (unknown language, missing PII key) fails before any work
    fingerprint = run_fingerprint(readers, cfg)
    done = _complete_stats(paths, fingerprint)
    if done is not None:
        (console or Console(stderr=True)).print(
            f"data: {paths.out} already holds this run's output; nothing to do"
        )
        return done
    resumed = _prepare(paths, fingerprint)
    own_executor = executor is None
    executor = executor or make_executor(cfg.executor, cfg.workers)
    cfg_json = cfg.model_dump_json()
    out = str(paths.out)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 3)
        return result

    try:
        with _progress(console) as progress:
            ingest = timed("read", lambda: _ingest(readers, paths, cfg, progress))
            n = ingest["shards"]
            filtered = timed(
                "filter",
                lambda: _run_phase("filter", filter_shard, n, paths, cfg_json, executor, progress),
            )
            fitted = timed("fit", lambda: fit_models(out, n, cfg))
            scored = timed(
                "score",
                lambda: _run_phase("score", score_shard, n, paths, cfg_json, executor, progress),
            )
            dedup = timed("dedup", lambda: dedup_all(out, n, cfg))
            final = timed(
                "finalize",
                lambda: _run_phase(
                    "finalize", finalize_shard, n, paths, cfg_json, executor, progress
                ),
            )
    finally:
        if own_executor:
            executor.close()

    funnel = [
        ingest["funnel"],
        *_merge_steps([m["steps"] for m in filtered] + [m["steps"] for m in scored]),
        *dedup["steps"],
    ]
    pii = next((s for s in funnel if s["step"] == "pii"), None)
    events = pii.get("events", {}) if pii else {}
    languages: Counter[str] = Counter()
    for m in final:
        languages.update(m["languages"])
    seconds = time.perf_counter() - started
    docs_out = sum(m["clean"] for m in final)
    docs_rejected = sum(m["rejected"] for m in final)
    stats: dict[str, Any] = {
        "fingerprint": fingerprint,
        "docs_in": ingest["records"],
        "docs_out": docs_out,
        "docs_rejected": docs_rejected,
        "docs_malformed": sum(ingest["funnel"]["dropped"].values()),
        "seconds": round(seconds, 3),
        "docs_per_second": round(ingest["records"] / seconds, 1) if seconds else None,
        "executor": {"name": executor.name, "workers": executor.workers, "resumed": resumed},
        "phase_seconds": timings,
        "funnel": funnel,
        "pii": {t: events.get(t, 0) for t in cfg.pii.types} if cfg.pii.enabled else {},
        "pii_docs_masked": events.get("docs_masked", 0),
        "dedup_clusters": dedup["cluster_sizes"],
        "anomaly": fitted.get("anomaly"),
        "noise_model": fitted.get("noise_model"),
        "languages": dict(languages.most_common()),
        "sources": ingest["sources"],
        "skipped_files": ingest["skipped_files"],
        "shards": {"clean": n, "rejected": n},
        "noise_rate_before": None,
        "noise_rate_after": None,
        "clean_docs_lost_rate": None,
    }
    if ground_truth is not None:
        stats.update(evaluate_noise(Path(ground_truth), paths.clean, paths.rejected))
        stats["model_filters"] = evaluate_model_filters(
            Path(ground_truth), paths.clean, paths.rejected
        )
    atomic_write_json(paths.stats, stats)
    shutil.rmtree(paths.work, ignore_errors=True)
    return stats
