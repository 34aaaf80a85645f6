"""A model-agnostic, single-process training loop with exact resume.

The loop knows nothing about classifiers: it takes a model, a `loss_fn(model, batch) ->
(loss, n_tokens)` and a batch source that can start at any position, so a decoder LM trains
with the same code. It owns AdamW, the warmup-cosine schedule, gradient clipping, bf16
autocast, periodic evaluation and checkpoints, and `metrics.jsonl`:

    {"kind": "train", "step", "loss", "lr", "grad_norm", "tokens", "tokens_per_second",
     "seconds"}                      seconds: training time so far (eval and saving excluded)
    {"kind": "eval", "step", ...whatever `evaluate` returns (eval_loss, eval_accuracy, ...)}

Resume replays the run exactly: the checkpoint holds model, optimizer, scheduler, RNG and
data position, and metrics rows past the checkpoint are dropped before appending again.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from lmforge.config import TrainConfig
from lmforge.errors import ConfigError, LmforgeError
from lmforge.train.checkpoint import (
    TrainState,
    capture_rng_state,
    clear_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from lmforge.train.schedule import build_scheduler
from lmforge.workspace import atomic_write_text


class TrainingDivergedError(LmforgeError):
    """The loss became NaN or infinite; the weights were not updated with it."""


LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, int]]
EvalFn = Callable[[nn.Module], dict[str, float]]


class BatchSource(Protocol):
    """Batches in a fixed order; `iter_from(k)` yields the same batches as skipping k."""

    def iter_from(self, position: int) -> Iterator[Any]: ...


@dataclass
class TrainerSettings:
    max_steps: int
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    precision: Literal["fp32", "bf16"] = "fp32"
    eval_every: int = 100
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    final_loss_window: int = 20  # final_loss = mean train loss of the last this-many steps

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision={self.precision!r}: use 'fp32' or 'bf16'")
        for name in ("max_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: use at least 1")

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> TrainerSettings:
        return cls(
            max_steps=cfg.max_steps,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_steps,
            min_lr_ratio=cfg.min_lr_ratio,
            grad_clip=cfg.grad_clip,
            precision=cfg.precision,
            eval_every=cfg.eval_every,
            checkpoint_every=cfg.checkpoint_every,
        )


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    tokens_per_second: float
    train_seconds: float
    last_eval: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None  # the checkpoint step this call continued from
    losses: list[float] = field(default_factory=list)  # every step's loss, resumed ones too


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay matrices only; norms, biases and embeddings are left alone."""
    embeddings = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so autocast pays off."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def move_to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a line cut short by a crash is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def loss_progress(console: Console) -> Progress:
    """The training progress bar: steps done, the latest loss, time left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=console,
        transient=not console.is_terminal,  # no stale bar lines in captured logs
    )


class Trainer:
    """Trains `model` for `settings.max_steps`, resuming from `out_dir/checkpoints` when the
    newest checkpoint carries the same `run_meta` (otherwise those checkpoints are cleared)."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: BatchSource,
        settings: TrainerSettings,
        out_dir: str | Path,
        evaluate: EvalFn | None = None,
        console: Console | None = None,
        run_meta: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.batches = batches
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.evaluate = evaluate
        self.console = console or Console(stderr=True)
        self.run_meta = dict(run_meta or {})
        self.device = next(model.parameters()).device
        # foreach: one fused kernel per tensor group instead of a Python loop per parameter
        # (~10% of a CPU step at the default size; PyTorch only picks it by itself on GPU).
        self.optimizer = torch.optim.AdamW(
            build_param_groups(model, settings.weight_decay), lr=settings.lr, foreach=True
        )
        self.scheduler = build_scheduler(
            self.optimizer, settings.warmup_steps, settings.max_steps, settings.min_lr_ratio
        )
        self.state = TrainState(meta=self.run_meta)
        self.rows: list[dict[str, Any]] = []
        if settings.precision == "bf16" and self.device.type == "cpu" and not cpu_has_bf16():
            self.console.print(
                "[yellow]precision bf16 on a CPU without AVX512-BF16/AMX is emulated and "
                "runs about 10x slower than fp32 here; set train.precision: fp32"
            )

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.settings.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- resume ------------------------------------------------------------------------------

    def _resume_or_reset(self) -> int | None:
        """Load the newest checkpoint of this same run; returns its step, or None if fresh."""
        latest = latest_checkpoint(self.ckpt_dir)
        resumed_from = None
        if latest is not None and read_state(latest).get("meta") == self.run_meta:
            self.state = load_checkpoint(latest, self.model, self.optimizer, self.scheduler)
            self.state.meta = self.run_meta
            self.rows = [r for r in self._read_metrics() if r.get("step", 0) <= self.state.step]
            resumed_from = self.state.step
        else:
            clear_checkpoints(self.ckpt_dir)
            self.rows = []
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.rows))
        return resumed_from

    def _read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_path)

    # -- loop --------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        resumed_from = self._resume_or_reset()
        if resumed_from is not None:
            self.console.print(
                f"resuming from checkpoint step {resumed_from}/{self.settings.max_steps}"
            )
        self.model.train()
        with self._progress() as progress, self.metrics_path.open("a", encoding="utf-8") as log:
            losses = [r["loss"] for r in self.rows if r.get("kind") == "train"]
            task = progress.add_task(
                "train",
                total=self.settings.max_steps,
                completed=self.state.step,
                loss=losses[-1] if losses else math.nan,
            )
            # An interrupt between a step and its evaluation would otherwise skip that eval.
            if self._eval_due(self.state.step) and not self._has_eval(self.state.step):
                self._log(log, self._run_eval())
            self._loop(log, lambda loss: progress.update(task, advance=1, loss=loss))
        return self._result(resumed_from)

    def _loop(self, log: Any, on_step: Callable[[float], None]) -> None:
        s = self.settings
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = s.grad_clip if s.grad_clip > 0 else math.inf
        batches = self.batches.iter_from(self.state.data_position)
        rng_at_step_start = None  # None: the generators already hold the state to save
        updating = False
        try:
            while self.state.step < s.max_steps:
                rng_at_step_start = capture_rng_state()
                started = time.perf_counter()
                batch = move_to(next(batches), self.device)
                self.optimizer.zero_grad(set_to_none=True)
                with self._autocast():
                    loss, n_tokens = self.loss_fn(self.model, batch)
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
                loss_value, lr = float(loss.item()), self.optimizer.param_groups[0]["lr"]
                if not math.isfinite(loss_value):
                    raise TrainingDivergedError(
                        f"loss is {loss_value} at step {self.state.step + 1} (lr {lr:.2e}); "
                        "lower train.lr or raise train.warmup_steps"
                    )
                # From here until the row is logged the state is half old, half new: an
                # interrupt in this window keeps the previous checkpoint instead.
                updating = True
                self.optimizer.step()
                self.scheduler.step()
                seconds = time.perf_counter() - started
                st = self.state
                st.step += 1
                st.data_position += 1
                st.tokens_seen += int(n_tokens)
                st.train_seconds += seconds
                self._log(
                    log,
                    {
                        "kind": "train",
                        "step": st.step,
                        "loss": loss_value,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens": int(n_tokens),
                        "tokens_per_second": int(n_tokens) / max(seconds, 1e-9),
                        "seconds": st.train_seconds,
                    },
                )
                updating, rng_at_step_start = False, None
                on_step(loss_value)
                if self._eval_due(st.step):
                    self._log(log, self._run_eval())
                if st.step % s.checkpoint_every == 0 or st.step == s.max_steps:
                    self._save()
        except KeyboardInterrupt:
            if updating:
                self.console.print("[yellow]interrupted mid-update; the last checkpoint stays")
            else:
                # A step cut short replays from its start: same batch, same dropout masks.
                path = self._save(rng=rng_at_step_start)
                self.console.print(f"[yellow]interrupted: saved {path.name}; rerun to resume")
            raise

    def _eval_due(self, step: int) -> bool:
        s = self.settings
        return (
            self.evaluate is not None
            and step > 0
            and (step % s.eval_every == 0 or step == s.max_steps)
        )

    def _has_eval(self, step: int) -> bool:
        return any(r.get("kind") == "eval" and r.get("step") == step for r in self.rows)

    def _run_eval(self) -> dict[str, Any]:
        assert self.evaluate is not None
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                metrics = self.evaluate(self.model)
        finally:
            self.model.train()
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        self.console.print(f"step {self.state.step}: {shown}")
        return {"kind": "eval", "step": self.state.step, **metrics}

    def _log(self, log: Any, row: dict[str, Any]) -> None:
        self.rows.append(row)
        log.write(json.dumps(row) + "\n")
        log.flush()

    def _save(self, rng: Any = None) -> Path:
        return save_checkpoint(
            self.ckpt_dir,
            self.model,
            self.optimizer,
            self.scheduler,
            self.state,
            rng=rng,
            keep=self.settings.keep_checkpoints,
        )

    def _progress(self) -> Progress:
        return loss_progress(self.console)

    def _result(self, resumed_from: int | None) -> TrainResult:
        losses = [r["loss"] for r in self.rows if r.get("kind") == "train"]
        window = losses[-self.settings.final_loss_window :]
        evals = [r for r in self.rows if r.get("kind") == "eval"]
        last_eval = (
            {k: v for k, v in evals[-1].items() if k not in ("kind", "step")} if evals else {}
        )
        st = self.state
        return TrainResult(
            steps=st.step,
            final_loss=sum(window) / len(window) if window else math.nan,
            tokens_per_second=st.tokens_seen / st.train_seconds if st.train_seconds else 0.0,
            train_seconds=st.train_seconds,
            last_eval=last_eval,
            resumed_from=resumed_from,
            losses=losses,
        )
