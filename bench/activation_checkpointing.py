"""Activation memory and step time of each activation checkpointing policy on the decoder LM.

Prints ONE JSON object (progress goes to stderr):

    python bench/activation_checkpointing.py [--layers 6,12,24,48,96] [--d-model 64]
        [--seq-len 128] [--repeats 5]

- memory: for every depth and policy, the peak of live activation bytes over one forward +
  backward, and the bytes still held when the forward returns; the exponent b of a
  least-squares fit memory ~ a * N^b on log-log axes per policy.
- max_batch: the largest batch whose peak fits a cap (the peak of batch 16 without
  checkpointing at --mid-layers depth), by a bracketing search on the same measure.
- step_time: median forward + backward wall time per policy at --mid-layers depth, and its
  overhead relative to no checkpointing.

A CPU build has no peak-memory counter, so memory is counted by a dispatch mode that sees
every tensor the step creates (see METHOD).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
import weakref
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lmforge.models.decoder import DecoderLM, decoder_config
from lmforge.train.activation_checkpoint import apply_activation_checkpointing

METHOD = (
    "A TorchDispatchMode sees every aten op run during one forward + backward (checkpoint "
    "recomputation included) and registers each new output storage once (views and in-place "
    "results share their input's storage and are skipped); a weakref finalizer on the storage "
    "marks when it is freed. 'peak_bytes' is the maximum of live registered bytes over the "
    "step: activations kept for backward, checkpoint boundary inputs, selective-checkpoint "
    "caches, recomputed internals, activation gradients, logits and loss. Parameters and "
    "their .grad buffers (allocated before the step) and kernels' internal scratch are not "
    "counted. 'retained_bytes' is the live count when the forward returns, i.e. what is held "
    "for backward. 'saved_hooks_bytes' is the unique storage bytes packed by "
    "saved_tensors_hooks in the forward; it sees checkpoint boundary inputs but not tensors "
    "cached by selective checkpointing. All runs are real fp32 CPU steps."
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class LiveBytes(TorchDispatchMode):
    """Counts bytes of the storages that ops create while active, until each is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _freed(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs: set[int] | None = None
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            # Storage Python objects persist while the C++ storage lives, so id() is a stable
            # key and the finalizer fires exactly when the memory is released.
            storage = t.untyped_storage()
            key, nbytes = id(storage), storage.nbytes()
            if key in self.live or nbytes == 0:
                continue
            if inputs is None:
                inputs = {
                    id(a.untyped_storage())
                    for a in tree_leaves((args, kwargs))
                    if isinstance(a, torch.Tensor)
                }
            if key in inputs:  # a view or an in-place result: no new memory
                continue
            self.live[key] = nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._freed, key)
        return out


def build(n_layers: int, policy: str, args: argparse.Namespace) -> DecoderLM:
    torch.manual_seed(0)
    cfg = decoder_config(
        "tiny",
        args.vocab,
        d_model=args.d_model,
        n_layers=n_layers,
        n_heads=args.n_heads,
        n_kv_heads=args.n_heads,
        d_ff=3 * args.d_model,
        max_seq_len=args.seq_len,
    )
    model = DecoderLM(cfg)
    apply_activation_checkpointing(model, policy)
    return model


def lm_loss(model: DecoderLM, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def measure_memory(n_layers: int, policy: str, batch: int, args: argparse.Namespace) -> dict:
    model = build(n_layers, policy, args)
    # Gradient buffers exist before the step, so accumulation is in place and uncounted.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    ids = torch.randint(0, args.vocab, (batch, args.seq_len + 1))
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[id(storage)] = storage.nbytes()
        return t

    tracker = LiveBytes()
    with tracker:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = lm_loss(model, ids)
        retained = tracker.current
        loss.backward()
        del loss
    return {
        "peak_bytes": tracker.peak,
        "retained_bytes": retained,
        "saved_hooks_bytes": sum(saved.values()),
    }


def fit_exponent(depths: list[int], values: list[int]) -> float:
    """Least-squares slope of log(value) against log(depth)."""
    xs, ys = [math.log(n) for n in depths], [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return num / sum((x - mx) ** 2 for x in xs)


def max_batch(policy: str, cap: int, args: argparse.Namespace) -> dict[str, Any]:
    """Largest batch whose peak fits `cap`, and the batches probed to find it.

    A bracketing search (doubling, then bisection) on the measured peak, started where the
    line through the peaks of batches 8 and 16 meets the cap: activation bytes grow linearly
    with the batch, so probing that batch and the next usually closes the bracket at once,
    without the overshooting doubling steps that make big (slow) probes. If the line is off,
    the doubling and bisection still make the answer exact.
    """
    peaks: dict[int, int] = {}

    def fits(batch: int) -> bool:
        if batch not in peaks:
            log(f"  {policy} batch {batch}")
            peaks[batch] = measure_memory(args.mid_layers, policy, batch, args)["peak_bytes"]
        return peaks[batch] <= cap

    lo, hi = 0, None  # largest batch known to fit, smallest known not to

    def probe(batch: int) -> None:
        nonlocal lo, hi
        if fits(batch):
            lo = max(lo, batch)
        elif hi is None or batch < hi:
            hi = batch

    probe(8)
    probe(16)
    slope = (peaks[16] - peaks[8]) / 8
    if slope > 0:
        guess = min(16 + math.floor((cap - peaks[16]) / slope), args.max_batch)
        if guess > lo and (hi is None or guess < hi):
            probe(guess)
        if hi is None or lo + 1 < hi:
            probe(lo + 1)
    while hi is None and lo < args.max_batch:
        probe(min(2 * max(lo, 1), args.max_batch))
    while hi is not None and hi - lo > 1:
        probe((lo + hi) // 2)
    return {"batch": lo, "probed": sorted(peaks)}


def step_times(policies: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    """Forward + backward wall times per policy, the policies taking turns in each round so
    that a change in background load hits all of them alike."""
    models = {p: build(args.mid_layers, p, args) for p in policies}
    ids = torch.randint(0, args.vocab, (16, args.seq_len + 1))
    times: dict[str, list[float]] = {p: [] for p in policies}
    for i in range(args.warmup + args.repeats):
        for policy, model in models.items():
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            lm_loss(model, ids).backward()
            if i >= args.warmup:
                times[policy].append(time.perf_counter() - started)
    return times


def csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _init_worker() -> None:
    # Memory counts do not depend on threads; one per worker process keeps the workers from
    # fighting over the cores (and from OpenMP spin-waits when the machine is busy).
    torch.set_num_threads(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=csv_ints, default=[6, 12, 24, 48, 96])
    parser.add_argument("--selective-layers", type=csv_ints, default=[6, 24, 96])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--mid-layers", type=int, default=24)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for step times")
    parser.add_argument("--workers", type=int, default=2, help="processes for memory runs")
    args = parser.parse_args()
    started = time.perf_counter()
    policies = ["none", "full", "sqrt", "selective"]

    memory: dict[str, dict[str, dict[str, int]]] = {p: {} for p in policies}
    batches: dict[str, dict[str, Any]] = {}
    spawn = multiprocessing.get_context("spawn")  # no fork after torch set up its threads
    with ProcessPoolExecutor(args.workers, mp_context=spawn, initializer=_init_worker) as pool:
        cap = pool.submit(measure_memory, args.mid_layers, "none", 16, args).result()["peak_bytes"]
        # Biggest jobs first, so no long one starts last.
        jobs = {pool.submit(max_batch, p, cap, args): ("batch", p, 0) for p in policies}
        grid = [
            (n, p)
            for p in policies
            for n in (args.selective_layers if p == "selective" else args.layers)
        ]
        for n, policy in sorted(grid, reverse=True):
            jobs[pool.submit(measure_memory, n, policy, 16, args)] = ("memory", policy, n)
        for job in as_completed(jobs):
            kind, policy, n = jobs[job]
            if kind == "batch":
                batches[policy] = job.result()
            else:
                memory[policy][str(n)] = job.result()
            log(f"done {kind} {policy}" + (f" N={n}" if n else ""))
    for policy in policies:
        memory[policy] = dict(sorted(memory[policy].items(), key=lambda kv: int(kv[0])))
    batches = {p: batches[p] for p in policies}

    exponents = {}
    for policy, rows in memory.items():
        if len(rows) < 2:
            continue
        depths = [int(n) for n in rows]
        exponents[policy] = {
            field: round(fit_exponent(depths, [r[field] for r in rows.values()]), 3)
            for field in ("peak_bytes", "retained_bytes")
        }
        # Fixed costs (embedding, logits, one block's recompute) flatten the fit at small N;
        # the slope over the two deepest models shows where it is heading.
        exponents[policy]["peak_bytes_last_pair"] = round(
            fit_exponent(depths[-2:], [r["peak_bytes"] for r in list(rows.values())[-2:]]), 3
        )

    torch.set_num_threads(args.threads)
    log("step times")
    timing: dict[str, dict[str, Any]] = {
        policy: {
            "median_s": round(statistics.median(t), 4),
            "min_s": round(min(t), 4),
            "all_s": [round(x, 4) for x in t],
        }
        for policy, t in step_times(policies, args).items()
    }
    # The minimum is the run least disturbed by other processes; on a busy machine the
    # overhead from minima is the steadier of the two.
    for row in timing.values():
        row["overhead"] = round(row["median_s"] / timing["none"]["median_s"] - 1, 3)
        row["overhead_from_min"] = round(row["min_s"] / timing["none"]["min_s"] - 1, 3)

    report = {
        "benchmark": "activation_checkpointing",
        "model": {
            "class": "DecoderLM",
            "d_model": args.d_model,
            "n_heads": args.n_heads,
            "n_kv_heads": args.n_heads,
            "d_ff": 3 * args.d_model,
            "seq_len": args.seq_len,
            "vocab": args.vocab,
            "dtype": "float32",
        },
        "method": METHOD,
        "memory": {"batch": 16, "by_policy": memory, "exponent_b": exponents},
        "max_batch": {
            "layers": args.mid_layers,
            "cap_bytes": cap,
            "cap": "peak_bytes of policy none at batch 16",
            "by_policy": batches,
        },
        "step_time": {
            "layers": args.mid_layers,
            "batch": 16,
            "threads": args.threads,
            "repeats": args.repeats,
            "by_policy": timing,
        },
        "torch": torch.__version__,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
