"""The `corpus` stage: generate the demo corpus into WORKDIR/corpus/ with a progress bar."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lmforge.config import RunConfig
from lmforge.demo.generator import CORPUS_FILE, generate_corpus
from lmforge.demo.writers import CSV_FILE, POSTS_FILE, SQLITE_FILE, TRUTH_FILE, WEB_DIR
from lmforge.errors import StageError
from lmforge.pipeline import StageResult
from lmforge.workspace import Workspace

STAGE = "corpus"
_SUMMARY_KEYS = ("docs", "noise_rate", "noisy_docs", "dup_groups", "malformed_lines", "counts")


def stage_inputs(cfg: RunConfig, ws: Workspace) -> list[Path]:
    """Nothing on disk: the corpus is a function of `cfg.corpus` alone."""
    return []


def clear_folder(folder: Path) -> None:
    """Remove everything a previous generation left, so no stale page is read as input."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def run(cfg: RunConfig, ws: Workspace, console: Console) -> StageResult:
    if cfg.corpus is None:
        raise StageError(
            "the corpus stage needs a `corpus:` section in the config "
            "(e.g. `corpus: {docs: 2000}`), or use `data.sources` for your own data"
        )
    out = ws.stage_dir(STAGE)
    clear_folder(out)
    started = time.perf_counter()
    columns = (
        TextColumn("[bold]generating corpus"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("corpus", total=cfg.corpus.docs)
        stats = generate_corpus(out, cfg.corpus, lambda n: bar.update(task, completed=n))
    seconds = time.perf_counter() - started
    summary = {key: stats[key] for key in _SUMMARY_KEYS}
    summary["bytes"] = stats["bytes"]["total"]
    summary["seconds"] = round(seconds, 3)
    summary["docs_per_second"] = round(stats["docs"] / max(seconds, 1e-9), 1)
    console.print(
        f"corpus: {stats['docs']} documents ({stats['noise_rate']:.1%} noisy, "
        f"{stats['malformed_lines']} malformed lines) in {seconds:.1f} s -> {out}"
    )
    outputs = [out / name for name in (CORPUS_FILE, TRUTH_FILE, POSTS_FILE, CSV_FILE, SQLITE_FILE)]
    return StageResult(summary=summary, outputs=[*outputs, out / WEB_DIR])
