"""The `data` pipeline stage: clean the configured sources (or the generated demo corpus)
into WORKDIR/data."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from lmforge.config import RunConfig, SourceConfig
from lmforge.errors import StageError
from lmforge.pipeline import StageResult
from lmforge.report.contract import REPORT_CONTRACT
from lmforge.workspace import Workspace


def _corpus_dir(ws: Workspace) -> Path:
    return ws.stage_dir("corpus", create=False)


def _sources(cfg: RunConfig, ws: Workspace) -> list[SourceConfig]:
    if cfg.data.sources:
        return list(cfg.data.sources)
    corpus = _corpus_dir(ws)
    if not corpus.is_dir():
        raise StageError(
            f"data.sources is empty and there is no generated corpus in {corpus}; list inputs "
            "under data.sources or add a `corpus:` section to generate the demo corpus"
        )
    from lmforge.demo import corpus_sources

    return corpus_sources(corpus)


def _ground_truth(cfg: RunConfig, ws: Workspace) -> Path | None:
    if cfg.data.ground_truth:
        return Path(cfg.data.ground_truth)
    default = _corpus_dir(ws) / "ground_truth.jsonl"
    return default if not cfg.data.sources and default.is_file() else None


def stage_inputs(cfg: RunConfig, ws: Workspace) -> list[Path]:
    """The source files/folders and the ground truth: a change to any of them reruns."""
    try:
        paths = [Path(s.path) for s in _sources(cfg, ws) if s.path is not None]
    except StageError:
        return []  # `run` raises the same error with the full message
    truth = _ground_truth(cfg, ws)
    if truth is not None and truth.exists():
        paths.append(truth)
    return paths


def run(cfg: RunConfig, ws: Workspace, console: Console) -> StageResult:
    from lmforge.data.clean import clean_sources

    out_dir = ws.stage_dir("data")
    stats = clean_sources(
        _sources(cfg, ws), out_dir, cfg.data, console, ground_truth=_ground_truth(cfg, ws)
    )
    summary = {key: stats[key] for key in REPORT_CONTRACT["data"]}
    summary["docs_rejected"] = stats["docs_rejected"]
    summary["funnel"] = stats["funnel"]
    summary["pii"] = stats["pii"]
    for key in (
        "languages",
        "docs_malformed",
        "docs_per_second",
        "pii_docs_masked",
        "dedup_clusters",
        "anomaly",
        "noise_model",
        "executor",
        "phase_seconds",
        "noise_kinds",
        "model_filters",
    ):
        if key in stats:
            summary[key] = stats[key]
    outputs = sorted((out_dir / "clean").glob("part-*.parquet"))
    outputs += sorted((out_dir / "rejected").glob("part-*.parquet"))
    outputs.append(out_dir / "stats.json")
    console.print(
        f"data: {stats['docs_in']:,} read, {stats['docs_out']:,} kept, "
        f"{stats['docs_rejected']:,} rejected in {stats['seconds']:.1f}s"
    )
    return StageResult(summary=summary, outputs=outputs)
