"""Pipeline bubble of GPipe and 1F1B against (p-1)/(m+p-1), and activation memory per schedule.

Prints ONE JSON object (progress goes to stderr):

    python bench/pipeline_bubble.py [--stages 2 4] [--microbatches 2 4 8 16]
        [--schedules gpipe 1f1b] [--t-forward-ms 10] [--repeats 5] [--compute sleep|real]

Each of p ranks (gloo on 127.0.0.1, CPU, one thread) runs one stage through
`lmforge.parallel.pipeline.build_pipeline`. A stage is a small Linear + tanh followed by a
custom autograd Function that costs t_f per micro-batch in forward and t_b = 2 t_f in
backward. With `--compute sleep` (default) that cost is a sleep: p ranks on a 2-core box
would otherwise fight for the CPU, and a stage's compute would stretch whenever another
stage computes at the same time, which is contention, not bubble. A sleep costs the same
wall-clock time whatever the other ranks do, so the only idle time left is the schedule's
own. `--compute real` spends the same budget on single-threaded matmuls (iteration count
calibrated once in the parent) for a machine with at least p free cores.

For every (schedule, p, m):
- step time T: median over --repeats steps (after --warmup steps, the first of which runs
  the stages' shape inference), each step between two barriers, timed on the last rank;
- busy: time spent inside the cost Function, measured per stage and step; the step's busy
  time is the max over stages (the stage that bounds the pipeline);
- bubble = 1 - busy / T (median over steps), against theory (p-1)/(m+p-1), and
  utilisation = 1 - bubble;
- activation memory on every stage: saved_tensors_hooks tag each tensor autograd saves
  with its micro-batch; a weakref finalizer on the packed box releases it when backward
  frees the graph. Peak live micro-batches (and bytes) on stage 0 should be m for GPipe and
  min(m, p) for 1F1B.

torch's Schedule1F1B refuses m < p, so those cases are listed with a "skipped" reason.
Ranks are spawned once per p (their torch import dominates the wall time on a loaded box).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lmforge.parallel.pipeline import build_pipeline

METHOD = (
    "One process per pipeline stage (gloo, CPU, OMP_NUM_THREADS=1), scheduled by "
    "torch.distributed.pipelining via lmforge.parallel.pipeline.build_pipeline. Each stage is "
    "Linear + tanh + a custom autograd Function costing t_f per micro-batch forward and "
    "t_b = 2 t_f backward. compute='sleep' makes that cost a sleep, so stages do not compete "
    "for the 2 shared cores and the only idle time is the schedule's; compute='real' spends "
    "it on single-threaded matmuls instead (needs >= p free cores). Step time T is the median "
    "over repeats of one schedule step between two barriers, timed on the last rank. Busy "
    "time is measured inside the cost Function on each stage; bubble = 1 - max_stage(busy) / T "
    "per step (median reported), theory (p-1)/(m+p-1). Activation memory: saved_tensors_hooks "
    "box every tensor autograd saves (parameters excluded), tagged with its micro-batch; a "
    "weakref finalizer on the box marks its release when backward frees the graph; peak live "
    "micro-batches and bytes are recorded per stage."
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Clock:
    """A stage's fixed compute cost per micro-batch, and the busy time it really took."""

    def __init__(self, t_forward: float, mode: str, matmul_iters: int = 0, size: int = 128):
        self.t_forward = t_forward
        self.mode = mode
        self.iters_forward = matmul_iters
        self.busy = 0.0
        if mode == "real":
            self.a, self.b = torch.randn(size, size), torch.randn(size, size)
            self.c = torch.empty(size, size)

    def spend(self, factor: int) -> None:
        """Cost `factor` x t_f: 1 for a forward, 2 for a backward."""
        started = time.perf_counter()
        if self.mode == "sleep":
            time.sleep(factor * self.t_forward)
        else:
            for _ in range(factor * self.iters_forward):
                torch.mm(self.a, self.b, out=self.c)
        self.busy += time.perf_counter() - started


class StageCost(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, clock: Clock) -> torch.Tensor:
        ctx.clock = clock
        clock.spend(1)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.clock.spend(2)
        return grad, None


class _Box:
    """What a pack hook hands autograd; its death means the saved tensor was released."""

    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class LiveActivations:
    """Bytes and micro-batches whose saved activations are alive, over one schedule step."""

    def __init__(self, param_ptrs: set[int]) -> None:
        self.param_ptrs = param_ptrs
        self.microbatch = -1
        self.live: dict[int, int] = {}  # micro-batch -> live saved bytes
        self.live_bytes = self.peak_bytes = self.peak_microbatches = 0

    def pack(self, t: torch.Tensor) -> Any:
        # Weights (and their transposed views) live for the whole run: not activations.
        if t.untyped_storage().data_ptr() in self.param_ptrs:
            return t
        box, nbytes, mb = _Box(t), t.numel() * t.element_size(), self.microbatch
        self.live[mb] = self.live.get(mb, 0) + nbytes
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self.peak_microbatches = max(self.peak_microbatches, len(self.live))
        weakref.finalize(box, self._release, mb, nbytes)
        return box

    def _release(self, mb: int, nbytes: int) -> None:
        self.live_bytes -= nbytes
        self.live[mb] -= nbytes
        if not self.live[mb]:
            del self.live[mb]

    @staticmethod
    def unpack(obj: Any) -> torch.Tensor:
        return obj.tensor if isinstance(obj, _Box) else obj


class BubbleStage(nn.Module):
    def __init__(self, width: int, clock: Clock) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.clock = clock
        self.tracker: LiveActivations | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tracker = self.tracker
        if tracker is None or not torch.is_grad_enabled():
            return StageCost.apply(torch.tanh(self.linear(x)), self.clock)
        tracker.microbatch += 1  # the schedule runs a stage's forwards in micro-batch order
        with torch.autograd.graph.saved_tensors_hooks(tracker.pack, tracker.unpack):
            return StageCost.apply(torch.tanh(self.linear(x)), self.clock)


def run_case(
    rank: int, world: int, schedule: str, microbatches: int, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Warmup + timed steps of one (schedule, m) on this rank's stage."""
    torch.manual_seed(rank)
    clock = Clock(cfg["t_forward"], cfg["compute"], cfg["matmul_iters"])
    stage = BubbleStage(cfg["width"], clock)
    param_ptrs = {p.untyped_storage().data_ptr() for p in stage.parameters()}
    pipe = build_pipeline(
        [(rank, stage)], schedule, microbatches, world, torch.device("cpu"), None, F.mse_loss
    )
    rows = microbatches * cfg["microbatch_size"]
    inputs, targets = torch.randn(rows, cfg["width"]), torch.randn(rows, cfg["width"])
    out: dict[str, list[Any]] = {"step_s": [], "busy_s": [], "peak_mb": [], "peak_bytes": []}
    for i in range(cfg["warmup"] + cfg["repeats"]):
        stage.zero_grad(set_to_none=True)
        # A fresh tracker per step: finalizers of older boxes update only their own tracker.
        tracker = stage.tracker = LiveActivations(param_ptrs)
        clock.busy = 0.0
        dist.barrier()
        started = time.perf_counter()
        pipe.step((inputs,), targets)
        dist.barrier()
        elapsed = time.perf_counter() - started
        if i < cfg["warmup"]:
            continue
        # Every micro-batch's graph must be freed by its backward (the first step's shape
        # inference keeps one graph of its own, hence the check only on timed steps).
        if tracker.live_bytes:
            raise RuntimeError(f"stage {rank}: {tracker.live_bytes} saved bytes outlived the step")
        out["step_s"].append(elapsed)
        out["busy_s"].append(clock.busy)
        out["peak_mb"].append(tracker.peak_microbatches)
        out["peak_bytes"].append(tracker.peak_bytes)
    return out


def skip_reason(schedule: str, p: int, m: int) -> str | None:
    if schedule == "1f1b" and m < p:
        return "torch's Schedule1F1B requires microbatches >= stages"
    return None


def _rank_main(rank: int, world: int, port: int, cfg: dict[str, Any], result_path: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        mine = {}
        for schedule in cfg["schedules"]:
            for m in cfg["microbatches"]:
                if skip_reason(schedule, world, m):
                    continue
                if rank == world - 1:
                    log(f"  p={world} {schedule} m={m} ({time.perf_counter() - t0:.1f}s)")
                mine[f"{schedule}/{m}"] = run_case(rank, world, schedule, m, cfg)
        last = world - 1
        gathered: list[Any] | None = [None] * world if rank == last else None
        dist.gather_object(mine, gathered, dst=last)
        if gathered is not None:
            Path(result_path).write_text(json.dumps(gathered))
        dist.barrier()  # nobody tears down the group while a peer still talks to it
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_stages(world: int, cfg: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    """Spawn `world` ranks; return each rank's measurements, or raise on error / timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        context = mp.spawn(
            _rank_main, args=(world, _free_port(), cfg, str(path)), nprocs=world, join=False
        )
        deadline = time.monotonic() + timeout
        # join() raises (with the rank's traceback) as soon as one rank fails.
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
                for process in context.processes:
                    process.join(5)
                raise TimeoutError(f"{world} pipeline ranks did not finish in {timeout}s")
        return json.loads(path.read_text())


def calibrate_matmuls(seconds: float, size: int = 128) -> int:
    """Single-threaded size x size matmuls that take about `seconds` on this machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b, c = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
        for _ in range(20):
            torch.mm(a, b, out=c)
        n = 200
        started = time.perf_counter()
        for _ in range(n):
            torch.mm(a, b, out=c)
        per = (time.perf_counter() - started) / n
    finally:
        torch.set_num_threads(threads)
    return max(1, round(seconds / per))


def summarise(
    schedule: str, p: int, m: int, ranks: list[dict[str, Any]], t_forward: float
) -> dict[str, Any]:
    key = f"{schedule}/{m}"
    per_rank = [r[key] for r in ranks]
    steps = per_rank[-1]["step_s"]  # timed on the last rank
    busy = [max(r["busy_s"][i] for r in per_rank) for i in range(len(steps))]
    bubbles = [1 - b / t for b, t in zip(busy, steps, strict=True)]
    bubble = statistics.median(bubbles)
    theory = (p - 1) / (m + p - 1)
    step = statistics.median(steps)
    t_mb = 3 * t_forward  # t_f + t_b per micro-batch
    return {
        "schedule": schedule,
        "stages": p,
        "microbatches": m,
        "step_ms": round(step * 1e3, 2),
        "step_ms_theory": round((m + p - 1) * t_mb * 1e3, 2),
        "busy_ms": round(statistics.median(busy) * 1e3, 2),
        "busy_ms_nominal": round(m * t_mb * 1e3, 2),
        "bubble": round(bubble, 4),
        "bubble_theory": round(theory, 4),
        "bubble_nominal": round(1 - m * t_mb / step, 4),
        "utilisation": round(1 - bubble, 4),
        "utilisation_theory": round(1 - theory, 4),
        "peak_live_microbatches_stage0": max(per_rank[0]["peak_mb"]),
        "peak_live_bytes_stage0": max(per_rank[0]["peak_bytes"]),
        "expected_live_microbatches_stage0": m if schedule == "gpipe" else min(m, p),
        "peak_live_microbatches_per_stage": [max(r["peak_mb"]) for r in per_rank],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--microbatches", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument(
        "--schedules", nargs="+", choices=["gpipe", "1f1b"], default=["gpipe", "1f1b"]
    )
    parser.add_argument("--t-forward-ms", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per case (>= 1)")
    parser.add_argument("--compute", choices=["sleep", "real"], default="sleep")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--microbatch-size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per stage count")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1: the first step runs the stages' shape inference")
    if min(args.stages) < 2:
        parser.error("--stages: a pipeline needs at least 2 stages")
    started, load_start = time.perf_counter(), os.getloadavg()
    t_forward = args.t_forward_ms / 1e3
    matmul_iters = calibrate_matmuls(t_forward) if args.compute == "real" else 0
    cfg = {
        "t_forward": t_forward,
        "compute": args.compute,
        "matmul_iters": matmul_iters,
        "width": args.width,
        "microbatch_size": args.microbatch_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "schedules": args.schedules,
        "microbatches": args.microbatches,
    }
    results = []
    for p in args.stages:
        log(f"p={p}: spawning {p} ranks")
        ranks = run_stages(p, cfg, args.timeout)
        for schedule in args.schedules:
            for m in args.microbatches:
                reason = skip_reason(schedule, p, m)
                if reason:
                    results.append(
                        {"schedule": schedule, "stages": p, "microbatches": m, "skipped": reason}
                    )
                else:
                    results.append(summarise(schedule, p, m, ranks, t_forward))
    report = {
        "method": METHOD,
        "compute": args.compute,
        "t_forward_ms": args.t_forward_ms,
        "t_backward_ms": 2 * args.t_forward_ms,
        "matmul_iters_forward": matmul_iters if args.compute == "real" else None,
        "width": args.width,
        "microbatch_size": args.microbatch_size,
        # Linear input + tanh output, fp32; the stage's weights are not counted.
        "activation_bytes_per_microbatch": 2 * args.microbatch_size * args.width * 4,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        # Other jobs on the box delay the ranks' wake-ups on receives: judge timings by this.
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "results": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
