"""The distributed training engine: one loop for every layout, precision and schedule.

Per rank, in order: prepare data (rank 0) → build the full model with the run's seed (the
same weights everywhere) → cut into pipeline stages (pp > 1) → tensor parallel →
activation checkpointing → data parallel (DDP or FSDP2) → AdamW per model part → resume from the
newest checkpoint of the same run → steps → final checkpoint → export (rank 0).

A step takes global batch `step` (see `tasks.py`); its loss is the sum over the whole
global batch divided by the global count, multiplied by the data-parallel degree because
DDP/FSDP2 average gradients over data-parallel ranks. So every layout computes the same
gradient, and the per-step loss equals a single-process run's up to float rounding.

Rows of RUN/metrics.jsonl: {"kind": "train", step, loss, lr, grad_norm, tokens,
tokens_per_second, mfu, peak_memory_mb, comm_seconds, compute_seconds, comm_share,
loss_scale, overflow, overflows, micro_batch_size, seconds} and {"kind": "eval", ...}.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from torch import nn

from lmforge.errors import ConfigError, LmforgeError
from lmforge.parallel.dims import ParallelDims
from lmforge.parallel.grad_norm import clip_grad_norm
from lmforge.parallel.pipeline import (
    build_pipeline,
    check_microbatches,
    num_stages,
    split_model,
)
from lmforge.parallel.sharding import parallelize_part, uses_fsdp
from lmforge.train.precision import Precision
from lmforge.train.run_config import TrainRunConfig, check_batch_shape
from lmforge.train.schedule import build_scheduler
from lmforge.train.tasks import Batch, Task, load_task, prepare_data
from lmforge.train.trainer import build_param_groups, cpu_has_bf16, loss_progress, read_metrics

AfterBackward = Callable[[int, list[nn.Module]], None]


class TrainingDivergedError(LmforgeError):
    """The loss became NaN or infinite in full precision."""


@dataclass
class RankContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> RankContext:
    """Join the process group torchrun (or `lmforge train --nproc`) set up in the env.

    NCCL on CUDA, gloo on CPU; the code path after this is the same.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world)
    return RankContext(rank, world, local_rank, device, world > 1)


def _cpu_peak_flops(device: torch.device) -> float:
    """Measured fp32 matmul FLOP/s of this process: the MFU denominator on a CPU."""
    a = torch.randn(512, 512)
    torch.mm(a, a)
    start, n = time.perf_counter(), 8
    for _ in range(n):
        torch.mm(a, a)
    return 2 * 512**3 * n / (time.perf_counter() - start)


_GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops(device: torch.device, precision: str) -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in _GPU_PEAK_BF16.items():
            if key in name:
                return value if precision != "fp32" else value / 2  # tf32 dense is half of bf16
        return 100e12
    return _cpu_peak_flops(device)


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """6·N (forward + backward over the non-embedding weights) + the attention score term."""
    n = sum(
        p.numel()
        for m in model.modules()
        if not isinstance(m, nn.Embedding)
        for p in m.parameters(recurse=False)
    )
    cfg = model.config
    d = getattr(cfg, "d_model", 0)
    layers = getattr(cfg, "n_layers", 0)
    return 6.0 * n + 12.0 * layers * d * seq_len


def reset_peak_memory(device: torch.device) -> None:
    """Start a new per-step memory high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the process's peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_bytes(device: torch.device) -> float:
    """Peak since `reset_peak_memory`: allocated device memory, or the process's RSS on a CPU."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # KiB on Linux


def memory_cap_bytes(device: torch.device, cap_mb: float, local_ranks: int) -> int:
    """The per-rank budget: the configured one, else 90 % of the device (or of RAM / ranks)."""
    if cap_mb > 0:
        return int(cap_mb * 2**20)
    if device.type == "cuda":
        return int(0.9 * torch.cuda.get_device_properties(device).total_memory)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(0.9 * total / max(1, local_ranks))


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups (decay matrices only), split into DTensor and plain parameters.

    Foreach kernels take one group's tensors together and cannot mix DTensors with plain
    tensors, which happens when tensor parallelism shards only some layers.
    """
    from torch.distributed.tensor import DTensor

    groups = []
    for group in build_param_groups(model, weight_decay):
        for want in (True, False):
            params = [p for p in group["params"] if isinstance(p, DTensor) == want]
            if params:
                groups.append({**group, "params": params})
    return groups


class Engine:
    def __init__(
        self,
        cfg: TrainRunConfig,
        out_dir: str | Path,
        ctx: RankContext | None = None,
        console: Console | None = None,
        after_backward: AfterBackward | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.ctx = ctx or init_distributed()
        self.console = console or Console(stderr=True, quiet=not self.ctx.is_main)
        self.after_backward = after_backward  # test hook: fault injection after backward
        self.rows: list[dict[str, Any]] = []
        self.overflows = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.step = 0
        self.tensorboard: Any = None

    # -- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        p, t = cfg.parallel, cfg.train
        self.dims = ParallelDims.resolve(ctx.world_size, p.dp_replicate, p.dp_shard, p.tp, p.pp)
        check_batch_shape(cfg, self.dims)
        if t.threads:
            torch.set_num_threads(t.threads)
        self.mesh, self.dp_mesh = (
            self.dims.build_mesh(ctx.device.type) if ctx.distributed else (None, None)
        )
        data_dir = self.out / "data"
        if ctx.is_main:
            prepare_data(cfg, data_dir)
        self._barrier()
        self.task: Task = load_task(cfg, data_dir)
        torch.manual_seed(t.seed)  # identical initial weights on every rank
        full = self.task.build_model()
        self.model_config = full.config
        self.flops_per_token = flops_per_token(full, cfg.data.seq_len)
        full.to(ctx.device)
        self.dp_rank = self.dp_mesh.get_local_rank() if self.dp_mesh is not None else 0
        self.tp_rank = self._coord("tp")
        self.pp_rank = self._coord("pp")
        if self.dims.pp > 1:
            check_microbatches(p.pp_schedule, self.dims.pp, p.microbatches)
            staged = split_model(full, p.pp_schedule, self.pp_rank, self.dims.pp, p.stages_per_rank)
            del full
        else:
            staged = [(0, full)]
        self.parts: list[nn.Module] = []  # the modules that own the parameters
        self.callables: list[nn.Module] = []  # what to call (a DDP wrapper for ddp)
        for _, part in staged:
            wrapped = parallelize_part(
                part,
                self.dims,
                self.mesh,
                t.precision,
                ctx.device,
                p.sequence_parallel,
                p.fsdp_reshard_after_forward,
                t.activation_checkpointing,
                t.ac_every_k,
            )
            self.parts.append(part)
            self.callables.append(wrapped)
        self.optimizers = [
            torch.optim.AdamW(optimizer_groups(m, t.weight_decay), lr=t.lr, foreach=True)
            for m in self.parts
        ]
        self.schedulers = [
            build_scheduler(o, t.warmup_steps, t.max_steps, t.min_lr_ratio) for o in self.optimizers
        ]
        self.precision = Precision(
            t.precision, ctx.device, uses_fsdp(self.dims), t.initial_loss_scale, self._world_group()
        )
        self.pipeline = None
        if self.dims.pp > 1:
            n = num_stages(p.pp_schedule, self.dims.pp, p.stages_per_rank)
            stage_modules = [(sid, m) for (sid, _), m in zip(staged, self.callables, strict=True)]
            self.pipeline = build_pipeline(
                stage_modules,
                p.pp_schedule,
                p.microbatches,
                n,
                ctx.device,
                self.mesh["pp"].get_group(),
                self._pipeline_loss,
            )
        self.controller = None
        self.pending_rows: list[dict[str, Any]] = []
        if t.dynamic_batch.enabled:
            self.controller = self._build_controller()
        self.comm = None
        if ctx.distributed:
            from lmforge.parallel.comm_meter import CommMeter

            self.comm = CommMeter().install()
            if hasattr(self.callables[0], "no_sync"):  # DDP reduces from C++: count via a hook
                self.comm.attach_ddp(self.callables[0])
        # Loss terms are summed, then divided by the global count; x dp undoes the average
        # DDP/FSDP2 take over data-parallel ranks.
        self._loss_norm = 1.0
        # Rank-specific dropout streams; tensor-parallel peers share one (they hold the
        # same replicated activations).
        torch.manual_seed(t.seed + 1 + self.dp_rank * 1009 + self.pp_rank * 7919)
        self.peak_flops = peak_flops(ctx.device, t.precision)
        if t.precision != "fp32" and ctx.device.type == "cpu" and not cpu_has_bf16():
            self.console.print(
                f"[yellow]train.precision {t.precision} on a CPU without AVX512-BF16/AMX is "
                "emulated and runs about 10x slower than fp32; set train.precision: fp32"
            )

    def _build_controller(self) -> Any:
        from lmforge.train.batch_controller import (
            ControllerSettings,
            MicroBatchController,
            divisors,
        )

        t = self.cfg.train
        per_rank = t.global_batch_size // self.dims.dp
        start = t.micro_batch_size or max(
            d for d in divisors(per_rank) if d <= max(1, per_rank // 2)
        )
        db = t.dynamic_batch
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.ctx.world_size))
        settings = ControllerSettings(
            per_rank_batch=per_rank,
            memory_cap_bytes=memory_cap_bytes(self.ctx.device, db.memory_cap_mb, local),
            initial_micro=start,
            headroom=db.headroom,
            high_water=db.high_water,
            patience=db.patience,
        )
        return MicroBatchController(settings, on_decision=self._on_batch_decision)

    def _on_batch_decision(self, decision: dict[str, Any]) -> None:
        self.pending_rows.append({"kind": "batch", **decision, "step": self.step})
        self.console.print(
            f"micro-batch {decision.get('old')} -> {decision.get('new')} ({decision.get('reason')})"
        )

    def _coord(self, dim: str) -> int:
        return self.mesh[dim].get_local_rank() if self.mesh is not None else 0

    def _world_group(self) -> Any:
        return dist.group.WORLD if self.ctx.distributed else None

    def _barrier(self) -> None:
        if self.ctx.distributed:
            dist.barrier()

    # -- one step ----------------------------------------------------------------------------

    def _pipeline_loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.task.loss_sum(output, targets) * self._loss_norm

    def _micro_size(self, rows: int) -> int:
        if self.controller is not None:
            return self.controller.micro
        return min(self.cfg.train.micro_batch_size or rows, rows)

    def _micro_batches(self, batch: Batch) -> list[Batch]:
        """Split the rank's share for gradient accumulation (the sum is unchanged).

        With an attention mask (padded texts) rows are grouped by length and each
        micro-batch is cut to its own longest row, so smaller micro-batches pad less.
        """
        rows = batch.targets.shape[0]
        size = self._micro_size(rows)
        if size >= rows:
            return [batch]
        inputs, targets = batch.inputs, batch.targets
        padded = len(inputs) > 1
        if padded:
            order = torch.argsort(inputs[1].sum(1), stable=True)
            inputs, targets = tuple(x[order] for x in inputs), targets[order]
        out = []
        for start in range(0, rows, size):
            sl = slice(start, start + size)
            part = tuple(x[sl] for x in inputs)
            if padded:
                width = max(int(part[1].sum(1).max()), 1)
                part = tuple(x[:, :width] for x in part)
            tokens = int(part[1].sum()) if padded else part[0].numel()
            out.append(Batch(part, targets[sl], targets[sl].numel(), tokens))
        return out

    def _forward_backward(self, batch: Batch) -> float:
        """Backward over the rank's share; returns its summed, normalised loss."""
        dev = self.ctx.device
        inputs = tuple(x.to(dev, non_blocking=True) for x in batch.inputs)
        targets = batch.targets.to(dev, non_blocking=True)
        if self.pipeline is not None:
            with self.precision.autocast():
                losses = self.pipeline.step(inputs, targets)
            return float(sum(float(x) for x in losses)) if losses else 0.0
        module = self.callables[0]
        micros = self._micro_batches(Batch(inputs, targets, batch.count, batch.tokens))
        total = 0.0
        for i, mb in enumerate(micros):
            last = i == len(micros) - 1
            with self._grad_sync(module, last), self.precision.autocast():
                loss = self.task.loss_sum(module(*mb.inputs), mb.targets) * self._loss_norm
            self.precision.backward(loss)
            total += float(loss.detach())
        return total

    def _forward_backward_retrying(self, batch: Batch, step: int) -> float:
        """Forward and backward of one step; out of memory → smaller micro-batches, same step."""
        from lmforge.train.batch_controller import is_out_of_memory

        while True:
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            try:
                local = self._forward_backward(batch)
                if self.after_backward is not None:
                    self.after_backward(step + 1, self.parts)
                return local
            except Exception as exc:
                if self.controller is None or not is_out_of_memory(exc):
                    raise
                if self.ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.controller.on_oom(peak_memory_bytes(self.ctx.device))

    def _grad_sync(self, module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Reduce gradients only on the last micro-batch of a step."""
        if hasattr(module, "no_sync"):  # DDP
            return contextlib.nullcontext() if sync else module.no_sync()
        if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
            module.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, Any]:
        t = self.cfg.train
        step = self.step
        started = time.perf_counter()
        batch = self.task.batch(step, self.dp_rank, self.dims.dp)
        global_count = batch.count * self.dims.dp
        self._loss_norm = self.dims.dp / global_count
        reset_peak_memory(self.ctx.device)
        local = self._forward_backward_retrying(batch, step)
        peak = peak_memory_bytes(self.ctx.device)
        self.precision.unscale(self.optimizers)
        params = [p for m in self.parts for p in m.parameters() if p.requires_grad]
        pp_group = self.mesh["pp"].get_group() if self.dims.pp > 1 else None
        grad_norm = clip_grad_norm(params, t.grad_clip, pp_group, self.ctx.device.type)
        stepped = self.precision.step(self.optimizers, grad_norm)
        if not stepped:
            self.overflows += 1
        lr = self.optimizers[0].param_groups[0]["lr"]
        for sched in self.schedulers:
            sched.step()
        loss = self._global_loss(local)
        if self.cfg.train.precision != "fp16" and not math.isfinite(loss):
            raise TrainingDivergedError(
                f"loss is {loss} at step {step + 1} (lr {lr:.2e}); lower train.lr, raise "
                "train.warmup_steps, or use train.precision fp32"
            )
        seconds = time.perf_counter() - started
        tokens = batch.tokens * self.dims.dp
        self.step += 1
        self.tokens_seen += tokens
        self.train_seconds += seconds
        tps = tokens / max(seconds, 1e-9)
        micro = self._micro_size_of(batch)
        if self.controller is not None:
            self.controller.after_step(peak, seconds, batch.tokens)
        comm = {}
        if self.comm is not None:
            from lmforge.parallel.comm_meter import step_fields

            comm = step_fields(self.comm.take(), seconds)
        return {
            "kind": "train",
            "step": self.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "tokens_per_second": tps,
            "mfu": self.flops_per_token * tps / (self.peak_flops * self.ctx.world_size),
            "peak_memory_mb": peak / 2**20,
            "loss_scale": self.precision.scale_value(),
            "overflow": not stepped,
            "overflows": self.overflows,
            "micro_batch_size": micro,
            "seconds": self.train_seconds,
            **comm,
        }

    def _micro_size_of(self, batch: Batch) -> int:
        rows = batch.targets.shape[0]
        if self.dims.pp > 1:
            return rows // self.cfg.parallel.microbatches
        return self._micro_size(rows)

    def _global_loss(self, local: float) -> float:
        """The global batch's mean loss, the same number on every rank."""
        if not self.ctx.distributed:
            return local
        owns = self.tp_rank == 0 and (self.pipeline is None or self.pipeline.has_last)
        value = torch.tensor([local if owns else 0.0], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(value)
        return float(value) / self.dims.dp

    # -- checkpoints -------------------------------------------------------------------------

    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def _extra_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "data_position": self.step,  # global batches consumed; the stream is indexed by it
            "identity": self.cfg.identity_hash(),
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds,
            "overflows": self.overflows,
            "schedulers": [s.state_dict() for s in self.schedulers],
            "precision": self.precision.state_dict(),
            "batch_controller": self.controller.state_dict() if self.controller else None,
            "layout": self.dims.describe(),
            "world_size": self.ctx.world_size,
        }

    def save(self) -> Path:
        from lmforge.train.dist_checkpoint import save_dist_checkpoint

        return save_dist_checkpoint(
            self.ckpt_root,
            self.step,
            self.parts,
            self.optimizers,
            self._extra_state(),
            keep=self.cfg.train.keep_checkpoints,
        )

    def resume(self) -> int | None:
        from lmforge.train.dist_checkpoint import latest_dist_checkpoint, load_dist_checkpoint

        latest = latest_dist_checkpoint(self.ckpt_root)
        if latest is None:
            return None
        state = json.loads((latest / "state.json").read_text(encoding="utf-8"))
        extra = state.get("extra", state)
        if extra.get("identity") != self.cfg.identity_hash():
            raise ConfigError(
                f"{self.ckpt_root} holds checkpoints of a different run (model, data or "
                "training settings changed); use another --out, or delete the folder to start over"
            )
        extra = load_dist_checkpoint(latest, self.parts, self.optimizers)
        self.step = int(extra["step"])
        self.tokens_seen = int(extra["tokens_seen"])
        self.train_seconds = float(extra["train_seconds"])
        self.overflows = int(extra["overflows"])
        for sched, sd in zip(self.schedulers, extra["schedulers"], strict=True):
            sched.load_state_dict(sd)
        self.precision.load_state_dict(extra["precision"])
        saved = extra.get("batch_controller")
        if self.controller is not None and saved:
            same_share = (
                saved["settings"]["per_rank_batch"] == self.controller.settings.per_rank_batch
            )
            if same_share:  # on another layout the per-rank batch differs: start afresh
                self.controller.load_state_dict(saved)
        self.pending_rows.clear()
        return self.step

    # -- metrics -----------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _load_rows(self, upto: int) -> None:
        """Keep rows up to the resumed step; a crash may have logged steps past it."""
        rows = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= upto]
        self.rows = rows
        if self.ctx.is_main:
            from lmforge.workspace import atomic_write_text

            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    # -- the loop ----------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        from lmforge.train.dist_checkpoint import TerminationFlag

        self.out.mkdir(parents=True, exist_ok=True)
        self.setup()
        resumed = self.resume()
        self._load_rows(resumed or 0)
        t = self.cfg.train
        c = self.console
        c.print(
            f"training {self.cfg.model.arch} {self.cfg.model.preset} "
            f"({self.dims.describe()}, {t.precision}, {self.ctx.device.type}) "
            f"for {t.max_steps} steps" + (f"; resumed at step {resumed}" if resumed else "")
        )
        log = self.metrics_path.open("a", encoding="utf-8") if self.ctx.is_main else None
        self.tensorboard = self._open_tensorboard()
        stopped_early = False
        try:
            with TerminationFlag() as term, self._progress() as progress:
                task = progress.add_task(
                    "train", total=t.max_steps, completed=self.step, loss=math.nan
                )
                while self.step < t.max_steps:
                    row = self.train_step()
                    self._log(log, row)
                    for decision in self.pending_rows:
                        self._log(log, decision)
                    self.pending_rows.clear()
                    progress.update(task, advance=1, loss=row["loss"])
                    if t.eval_every and self.step % t.eval_every == 0 and self.step < t.max_steps:
                        self._log(log, self.evaluate())
                    if self.step == t.max_steps or (
                        t.checkpoint_every and self.step % t.checkpoint_every == 0
                    ):
                        self.save()
                    elif self._any_rank(term.requested):
                        path = self.save()
                        c.print(
                            f"[yellow]SIGTERM: saved {path.name}; rerun the same command to resume"
                        )
                        stopped_early = True
                        break
        finally:
            if log is not None:
                log.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
            if self.comm is not None:
                self.comm.uninstall()
        return {"steps": self.step, "stopped_early": stopped_early}

    def _any_rank(self, flag: bool) -> bool:
        """A signal may reach one rank only; every rank must agree before the collective save."""
        if not self.ctx.distributed:
            return flag
        value = torch.tensor([1 if flag else 0], device=self.ctx.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def evaluate(self) -> dict[str, Any]:
        """Eval loss (and accuracy) with the sharded model; every rank runs the same batches."""
        if self.pipeline is not None:
            return {"kind": "eval", "step": self.step, "note": "evaluated after training (pp > 1)"}
        module = self.callables[0]
        sums: dict[str, float] = {}
        module.eval()
        try:
            with torch.no_grad(), self.precision.autocast():
                for b in self.task.eval_batches(
                    self.cfg.train.eval_batches, self.cfg.train.global_batch_size
                ):
                    out = module(*(x.to(self.ctx.device) for x in b.inputs))
                    for k, v in self.task.eval_sums(out, b.targets.to(self.ctx.device)).items():
                        sums[k] = sums.get(k, 0.0) + v
        finally:
            module.train()
        return {"kind": "eval", "step": self.step, **self.task.eval_metrics(sums)}

    def _log(self, log: Any, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if log is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()
            if self.tensorboard is not None:
                kind, step = row.get("kind"), row.get("step", 0)
                for key, value in row.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        self.tensorboard.add_scalar(f"{kind}/{key}", value, step)

    def _open_tensorboard(self) -> Any:
        if not (self.cfg.train.tensorboard and self.ctx.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard: true needs the tensorboard package; "
                "`pip install tensorboard` or set it to false"
            ) from None
        return SummaryWriter(str(self.out / "tensorboard"))

    def _progress(self) -> Any:
        return loss_progress(self.console)

    def losses(self) -> list[float]:
        return [r["loss"] for r in self.rows if r.get("kind") == "train"]
