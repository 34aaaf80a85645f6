"""Framework overhead of the training engine against a bare PyTorch loop (one CPU process).

Prints ONE JSON object (progress goes to stderr):

    python bench/engine_overhead.py [--steps 6] [--warmup 2] [--rounds 3] [--d-model 256]
        [--layers 4] [--seq-len 128] [--batch 4] [--threads 1] [--profile]

Both arms train the same DecoderLM (a preset with d_model/layers overrides, vocab from the
prepared data) from the same seed, on the same batches (the engine's packed windows of the
demo corpus; the bare loop gets `task.batch(step, 0, 1)`, materialised before timing), with
the same AdamW (foreach, decay on matrices only), warmup-cosine schedule and clipping at 1.0.

- engine: a fresh `Engine.setup()` per round, then `train_step()` (the work `fit()` repeats;
  the metrics-file write and progress bar of `fit()` are not timed).
- bare: zero_grad, forward, F.cross_entropy, backward, clip_grad_norm_, step, scheduler step.

Each round builds both arms afresh and runs them step by step in turn (engine step, bare
step, ...; who goes first alternates per step and per round), so the load of a shared
machine, which drifts over seconds, hits both alike. `warmup` steps are untimed, then
`steps` are timed. tokens/s = timed tokens / wall time of the timed steps; reported are the
median over rounds per arm, the ratio engine/bare of those medians and the median of the
per-round ratios. `cpu` is process CPU time per step, which a busy machine inflates less;
`cpu_ratio` = bare CPU ms / engine CPU ms per step (medians), the overhead seen through it.

The breakdown times each phase of every timed step with perf_counter (microseconds per
step): the bare loop's phases inline, the engine's by wrapping, on the instance, the methods
`train_step` calls; what `train_step` spends outside them is "other".

Loss agreement: both arms' per-step losses of round 1, warmup steps included. The engine
accumulates the clipping norm in float64 from per-parameter norms, `clip_grad_norm_` in
float32, so the clip coefficients differ in the last bits; Adam's normalised updates carry
that into later losses (~1e-6 relative). With the engine's clipping swapped into the bare
loop the losses come out bit-identical (its sum x 1/count loss, not the mean, changed no bit).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch.optim.lr_scheduler import LambdaLR

import lmforge.train.engine as engine_module
from lmforge.models.decoder import DecoderLM, decoder_config, decoder_param_count, llama_ffn_dim
from lmforge.train.engine import Engine, RankContext
from lmforge.train.run_config import TrainRunConfig
from lmforge.train.schedule import warmup_cosine_factor
from lmforge.train.tasks import Task, load_task, prepare_data

REL_TOLERANCE = 1e-5
TARGET = 0.95
# Module-level helpers of lmforge.train.engine that train_step calls -> breakdown label.
ENGINE_HELPERS = {
    "clip_grad_norm": "clip",
    "reset_peak_memory": "memory_probe",
    "peak_memory_bytes": "memory_probe",
    "peak_memory_mb": "memory_probe",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_config(args: argparse.Namespace) -> TrainRunConfig:
    heads = max(1, args.d_model // 64)
    overrides = {
        "d_model": args.d_model,
        "n_layers": args.layers,
        "n_heads": heads,
        "n_kv_heads": max(1, heads // 2),
        "d_ff": llama_ffn_dim(args.d_model),
    }
    total = args.warmup + args.steps
    return TrainRunConfig.model_validate(
        {
            "model": {"arch": "decoder", "preset": "tiny", "overrides": overrides},
            "data": {"source": "demo", "docs": args.docs, "seq_len": args.seq_len},
            "train": {
                "global_batch_size": args.batch,
                "max_steps": total,
                "warmup_steps": min(2, total - 1),
                "grad_clip": 1.0,
                "threads": args.threads,
                "seed": 0,
                "checkpoint_every": 0,
                "export": False,
            },
        }
    )


def build_model(cfg: TrainRunConfig, vocab_size: int) -> DecoderLM:
    """The model `LMTask.build_model` builds, constructed by hand for the bare loop."""
    torch.manual_seed(cfg.train.seed)
    over = {"max_seq_len": cfg.data.seq_len, **cfg.model.overrides}
    return DecoderLM(decoder_config(cfg.model.preset, vocab_size, **over))


class Recorder:
    """Per-step wall/CPU seconds and named phase seconds of one arm in one round."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = defaultdict(float)
        self.rows: list[dict[str, float]] = []
        self.losses: list[float] = []
        self.tokens = 0

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.phases[label] += time.perf_counter() - start

        return timed

    def finish_step(self, loss: float, tokens: int, wall: float, cpu: float, timed: bool) -> None:
        self.losses.append(loss)
        if timed:
            row = dict(self.phases)
            row["other"] = max(0.0, wall - sum(row.values()))
            self.rows.append({**row, "total": wall, "cpu": cpu})
            self.tokens += tokens
        self.phases = defaultdict(float)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / sum(r["total"] for r in self.rows)


class EngineArm:
    """The engine, unchanged, with its phases timed through instance-level wrappers."""

    def __init__(self, cfg: TrainRunConfig, out: Path, rec: Recorder) -> None:
        self.rec = rec
        self.engine = e = Engine(
            cfg, out, RankContext(0, 1, 0, torch.device("cpu"), False), Console(quiet=True)
        )
        e.setup()
        # Instance attributes shadow the methods train_step looks up on self.
        e.task.batch = rec.wrap("batch", e.task.batch)
        e._forward_backward = rec.wrap("forward_backward", e._forward_backward)
        e.precision.unscale = rec.wrap("unscale", e.precision.unscale)
        e.precision.step = rec.wrap("optimizer", e.precision.step)
        for opt in e.optimizers:
            opt.zero_grad = rec.wrap("zero_grad", opt.zero_grad)
        for sched in e.schedulers:
            sched.step = rec.wrap("scheduler", sched.step)

    @contextlib.contextmanager
    def timing_globals(self) -> Iterator[None]:
        """Time the module-level helpers train_step calls through the engine's globals."""
        # Whichever of them this version of the engine has (the memory probes were renamed).
        saved = {n: getattr(engine_module, n) for n in ENGINE_HELPERS if hasattr(engine_module, n)}
        try:
            for name, fn in saved.items():
                setattr(engine_module, name, self.rec.wrap(ENGINE_HELPERS[name], fn))
            yield
        finally:
            for name, fn in saved.items():
                setattr(engine_module, name, fn)

    def step(self, timed: bool) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        with self.timing_globals():
            row = self.engine.train_step()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.rec.finish_step(row["loss"], row["tokens"], wall, cpu, timed)


class BareArm:
    """The minimal hand-written loop, fed the engine task's batches."""

    def __init__(self, cfg: TrainRunConfig, task: Task, n_steps: int, rec: Recorder) -> None:
        t = cfg.train
        self.rec, self.clip = rec, t.grad_clip
        torch.set_num_threads(t.threads)
        self.model = build_model(cfg, task.vocab_size)
        named = list(self.model.named_parameters())
        # The engine's groups: weight decay on matrices, none on norms and the input embedding.
        decay = [p for n, p in named if p.ndim >= 2 and not n.startswith("tok_embeddings")]
        rest = [p for n, p in named if p.ndim < 2 or n.startswith("tok_embeddings")]
        self.params = [p for _, p in named]
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": t.weight_decay},
                {"params": rest, "weight_decay": 0},
            ],
            lr=t.lr,
            foreach=True,
        )
        self.sched = LambdaLR(
            self.opt, lambda s: warmup_cosine_factor(s, t.warmup_steps, t.max_steps, t.min_lr_ratio)
        )
        self.batches = [task.batch(s, 0, 1) for s in range(n_steps)]
        self.i = 0

    def step(self, timed: bool) -> None:
        b = self.batches[self.i]
        self.i += 1
        (x,), y = b.inputs, b.targets
        clock = time.perf_counter
        cpu = time.process_time()
        t0 = clock()
        self.opt.zero_grad(set_to_none=True)
        t1 = clock()
        logits = self.model(x)
        t2 = clock()
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        t3 = clock()
        loss.backward()
        t4 = clock()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        t5 = clock()
        self.opt.step()
        t6 = clock()
        self.sched.step()
        t7 = clock()
        cpu = time.process_time() - cpu
        marks = (t0, t1, t2, t3, t4, t5, t6, t7)
        labels = ("zero_grad", "forward", "loss", "backward", "clip", "optimizer", "scheduler")
        for label, a, z in zip(labels, marks, marks[1:], strict=False):
            self.rec.phases[label] = z - a
        self.rec.finish_step(float(loss.detach()), b.tokens, t7 - t0, cpu, timed)


def initial_weights_match(cfg: TrainRunConfig, out: Path, vocab_size: int) -> bool:
    """Whether the engine's model and the bare loop's start from the same weights."""
    engine = Engine(cfg, out, RankContext(0, 1, 0, torch.device("cpu"), False), Console(quiet=True))
    engine.setup()
    mine, theirs = build_model(cfg, vocab_size).state_dict(), engine.parts[0].state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def median_ms(rows: list[dict[str, float]]) -> dict[str, float]:
    labels = sorted({k for row in rows for k in row})
    return {k: round(1e3 * statistics.median(r.get(k, 0.0) for r in rows), 3) for k in labels}


def top_functions(profile: cProfile.Profile, steps: int, n: int = 20) -> list[dict[str, Any]]:
    """The profiled engine steps' functions by own time, per step."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = [
        {
            "function": f"{Path(path).name}:{line}({name})",
            "calls_per_step": round(calls / steps, 1),
            "own_ms_per_step": round(1e3 * own / steps, 3),
            "cumulative_ms_per_step": round(1e3 * cum / steps, 3),
        }
        for (path, line, name), (_, calls, own, cum, _) in stats.stats.items()
    ]
    rows.sort(key=lambda r: r["own_ms_per_step"], reverse=True)
    return rows[:n]


def profile_engine(cfg: TrainRunConfig, out: Path, warmup: int, steps: int) -> list[dict]:
    arm = EngineArm(cfg, out, Recorder())
    for _ in range(warmup):
        arm.step(timed=False)
    profile = cProfile.Profile()
    with arm.timing_globals():
        profile.enable()
        for _ in range(steps):
            arm.engine.train_step()
        profile.disable()
    return top_functions(profile, steps)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per arm and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both arms; 1 by default because on a shared machine a busy "
        "core stalls every OpenMP barrier and multi-thread step times swing by up to 10x",
    )
    parser.add_argument("--docs", type=int, default=4000, help="demo reviews to tokenize")
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile the engine in an extra, untimed run"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be >= 1, --warmup >= 0")
    cfg = run_config(args)
    n_steps = args.warmup + args.steps
    recs: dict[str, list[Recorder]] = {"engine": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="engine-overhead-") as tmp:
        out = Path(tmp)
        log("preparing data")
        prepare_data(cfg, out / "data")
        task = load_task(cfg, out / "data")
        vocab = task.vocab_size
        same_init = initial_weights_match(cfg, out, vocab)
        for r in range(args.rounds):
            gc.collect()
            e_rec, b_rec = Recorder(), Recorder()
            arms = {
                "engine": EngineArm(cfg, out, e_rec),
                "bare": BareArm(cfg, task, n_steps, b_rec),
            }
            for i in range(n_steps):
                order = ("engine", "bare") if (i + r) % 2 == 0 else ("bare", "engine")
                for name in order:
                    arms[name].step(timed=i >= args.warmup)
            recs["engine"].append(e_rec)
            recs["bare"].append(b_rec)
            log(
                f"round {r + 1}/{args.rounds}: engine {e_rec.tokens_per_second:.1f} tok/s, "
                f"bare {b_rec.tokens_per_second:.1f} tok/s"
            )
            del arms
        profile = profile_engine(cfg, out, args.warmup, args.steps) if args.profile else None

    tps = {arm: [rec.tokens_per_second for rec in rs] for arm, rs in recs.items()}
    med = {arm: statistics.median(v) for arm, v in tps.items()}
    paired = [e / b for e, b in zip(tps["engine"], tps["bare"], strict=True)]
    ratio = med["engine"] / med["bare"]
    e_loss, b_loss = recs["engine"][0].losses, recs["bare"][0].losses
    abs_diff = [abs(a - b) for a, b in zip(e_loss, b_loss, strict=True)]
    rel_diff = [d / max(abs(b), 1e-12) for d, b in zip(abs_diff, b_loss, strict=True)]
    steps_ms = {arm: median_ms([row for rec in rs for row in rec.rows]) for arm, rs in recs.items()}
    cpu = {arm: steps_ms[arm]["cpu"] for arm in steps_ms}
    over = {"max_seq_len": args.seq_len, **cfg.model.overrides}
    report: dict[str, Any] = {
        "model": {
            **cfg.model.overrides,
            "vocab_size": vocab,
            "seq_len": args.seq_len,
            "parameters": decoder_param_count(decoder_config(cfg.model.preset, vocab, **over)),
        },
        "batch": args.batch,
        "tokens_per_step": args.batch * args.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "engine_tokens_per_second": round(med["engine"], 2),
        "bare_tokens_per_second": round(med["bare"], 2),
        "ratio": round(ratio, 4),
        "median_paired_ratio": round(statistics.median(paired), 4),
        "cpu_ratio": round(cpu["bare"] / cpu["engine"], 4),
        "target": TARGET,
        "meets_target": ratio >= TARGET,
        "rounds_tokens_per_second": {k: [round(x, 2) for x in v] for k, v in tps.items()},
        "paired_ratios": [round(x, 4) for x in paired],
        "step_ms_median": steps_ms,
        "loss": {
            "initial_weights_equal": same_init,
            "max_abs_diff": max(abs_diff),
            "max_rel_diff": max(rel_diff),
            "rel_tolerance": REL_TOLERANCE,
            "agree": max(rel_diff) <= REL_TOLERANCE,
            "engine_rounds_identical": all(rec.losses == e_loss for rec in recs["engine"]),
            "engine": [round(x, 6) for x in e_loss],
            "bare": [round(x, 6) for x in b_loss],
        },
    }
    if profile is not None:
        report["engine_profile_top_own_time"] = profile
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
