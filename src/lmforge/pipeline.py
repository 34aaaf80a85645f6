"""Runs the stages of a run in order, skipping those whose inputs and config did not change.

Stage modules are imported only when a stage runs, so `lmforge --help` stays fast.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from lmforge.errors import LmforgeError
from lmforge.workspace import Workspace, hash_inputs

if TYPE_CHECKING:  # annotations only: the CLI imports STAGE_NAMES without pydantic's cost
    from lmforge.config import RunConfig


@dataclass
class StageResult:
    summary: dict[str, Any]
    outputs: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str  # defines stage_inputs(cfg, ws) and run(cfg, ws, console)
    sections: tuple[str, ...]  # config sections whose change forces a rerun
    always: bool = False  # cheap stages that always rerun (the report)
    enabled: Callable[[RunConfig], bool] = lambda cfg: True


STAGES: tuple[StageSpec, ...] = (
    StageSpec("corpus", "lmforge.demo.stage", ("corpus",), enabled=lambda c: c.corpus is not None),
    StageSpec("data", "lmforge.data.stage", ("data",)),
    StageSpec("train", "lmforge.train.stage", ("train",)),
    StageSpec("compress", "lmforge.compress.stage", ("compress",)),
    StageSpec("bench", "lmforge.bench.stage", ("bench", "serve")),
    StageSpec("report", "lmforge.report.stage", (), always=True),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage_spec(name: str) -> StageSpec:
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise LmforgeError(f"unknown stage {name!r}; stages are: {', '.join(STAGE_NAMES)}")


def config_hash(cfg: RunConfig, spec: StageSpec) -> str:
    parts = {s: cfg.section_hash(s) for s in spec.sections}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def run_stage(
    spec: StageSpec,
    cfg: RunConfig,
    ws: Workspace,
    console: Console,
    force: bool = False,
) -> tuple[str, StageResult | None]:
    """Run one stage; returns ("ran" | "skipped", result)."""
    module = importlib.import_module(spec.module)
    inputs = ws.relative_inputs(hash_inputs(module.stage_inputs(cfg, ws)))
    chash = config_hash(cfg, spec)
    if not force and not spec.always and ws.is_up_to_date(spec.name, inputs, chash):
        console.print(f"[dim]- {spec.name}: up to date, skipped[/dim]")
        summary = ws.summary(spec.name) or {}
        return "skipped", StageResult(summary=summary)
    console.rule(f"[bold]{spec.name}")
    started = ws.mark_started(spec.name, inputs, chash)
    try:
        result: StageResult = module.run(cfg, ws, console)
    except BaseException as exc:
        ws.mark_failed(spec.name, f"{type(exc).__name__}: {exc}")
        raise
    ws.mark_complete(spec.name, result.outputs, started, result.summary)
    return "ran", result


def run_pipeline(
    cfg: RunConfig,
    console: Console,
    force: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every enabled stage in order. `force` reruns named stages (and, through changed
    inputs, whatever depends on them)."""
    force = set(force)
    for name in force | set(only or ()):
        stage_spec(name)
    ws = Workspace(cfg.workdir)
    summaries: dict[str, dict[str, Any]] = {}
    wanted = set(only) if only is not None else None
    for spec in STAGES:
        if not spec.enabled(cfg) or (wanted is not None and spec.name not in wanted):
            continue
        _, result = run_stage(spec, cfg, ws, console, force=spec.name in force)
        if result is not None:
            summaries[spec.name] = result.summary
    return summaries
