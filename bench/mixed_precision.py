"""Memory and tokens/s of the training engine under fp32, bf16 and fp16 (one process).

Prints ONE JSON object (progress goes to stderr):

    python bench/mixed_precision.py [--device auto|cpu|cuda] [--precisions fp32 bf16 fp16]
        [--steps N] [--warmup N] [--d-model D] [--layers L] [--seq-len T] [--batch B]

The same DecoderLM (tiny preset with d_model/layers overrides, vocab from the prepared demo
data) trains through `Engine.train_step()` from the same seed on the same batches, with
`train.precision` set per arm: fp32, bf16 autocast, or fp16 autocast with loss scaling.
Each arm runs in a fresh subprocess (so process-wide counters belong to one arm; the data
are tokenized once by the parent). Defaults depend on the device: on CPU d_model 256, 4
layers, seq 128, batch 4, 1 + 4 steps; on CUDA d_model 1024, 8 layers, seq 512, batch 16,
5 + 30 steps (sized to finish well within 3 minutes on an H100-class GPU; untested there).

Per arm:
- tokens_per_second: median of the engine's per-step rows after `warmup` steps; also
  `wall_tokens_per_second` = timed tokens / wall time of the timed steps (synchronised).
- peak_memory_mb: the highest of the engine's per-step rows, i.e. `max_memory_allocated` on
  CUDA (a fresh process, so nothing but this arm counts), peak RSS of the process on CPU,
  which includes the Python runtime and torch's libraries: only a coarse, noisy measure.
- saved_for_backward: bytes saved for backward during one forward + loss (counted by
  `torch.autograd.graph.saved_tensors_hooks`, each storage once), split into activations,
  low-precision copies of weights that autocast saves, and the parameters themselves (which
  exist anyway). Deterministic, and the same on any device.
- state_bytes: parameters + gradients + AdamW state (autocast keeps all of them fp32).

Ratios are each precision over fp32. `--in-process` runs the arms one after another in this
process instead (for quick checks and tests): CUDA peaks are still reset per arm, but the
CPU peak RSS is then the whole process's and is left out.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.models.decoder import llama_ffn_dim
from lmforge.train.engine import Engine, RankContext
from lmforge.train.run_config import TrainRunConfig
from lmforge.train.tasks import prepare_data
from lmforge.train.trainer import cpu_has_bf16

PRECISIONS = ("fp32", "bf16", "fp16")
# Per device: (d_model, layers, seq_len, batch, steps, warmup). The CPU one fits a shared
# 2-core machine in a few minutes; the CUDA one is big enough for the GPU to be compute-bound.
DEFAULTS = {"cpu": (256, 4, 128, 4, 4, 1), "cuda": (1024, 8, 512, 16, 30, 5)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    return torch.device("cuda", 0) if choice == "cuda" else torch.device("cpu")


def run_config(args: argparse.Namespace, precision: str) -> TrainRunConfig:
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
                "precision": precision,
                "threads": args.threads if args.device == "cpu" else 0,
                "seed": 0,
                "checkpoint_every": 0,
                "export": False,
            },
        }
    )


def describe_device(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": device.type,
        "torch": torch.__version__,
        # "highest" means true fp32 matmuls (no TF32), which sets the fp32 baseline on a GPU.
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "name": torch.cuda.get_device_name(device),
            "capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 1),
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "cuda": torch.version.cuda,
        }
        return info
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return info | {
        "name": model,
        "cores": os.cpu_count(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "native_bf16": cpu_has_bf16(),
    }


def current_rss_mb() -> float:
    """Resident memory now (Linux), else the peak so far."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_for_backward(engine: Engine) -> dict[str, Any]:
    """Bytes saved for backward by one forward + loss under the engine's autocast."""
    module, device = engine.callables[0], engine.ctx.device
    params = list(module.parameters())
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    param_shapes = {tuple(p.shape) for p in params}
    seen: dict[int, tuple[int, str, str]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen:
            if ptr in param_ptrs:
                kind = "parameters"
            elif tuple(t.shape) in param_shapes and t.dtype != params[0].dtype:
                kind = "weight_casts"  # autocast's low-precision copy of a weight
            else:
                kind = "activations"
            seen[ptr] = (storage.nbytes(), kind, str(t.dtype).removeprefix("torch."))
        return t

    batch = engine.task.batch(0, 0, 1)
    inputs = tuple(x.to(device) for x in batch.inputs)
    targets = batch.targets.to(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), engine.precision.autocast():
        loss = engine.task.loss_sum(module(*inputs), targets)
    del loss
    out: dict[str, Any] = {"activations": 0, "weight_casts": 0, "parameters": 0}
    by_dtype: dict[str, int] = {}
    for nbytes, kind, dtype in seen.values():
        out[kind] += nbytes
        if kind == "activations":
            by_dtype[dtype] = by_dtype.get(dtype, 0) + nbytes
    out["activations_by_dtype"] = by_dtype
    out["activations_and_casts"] = out["activations"] + out["weight_casts"]
    return out


def state_bytes(engine: Engine) -> dict[str, int]:
    """Parameters, gradients and optimizer state held between steps."""

    def size(ts: list[torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in ts)

    params = [p for m in engine.parts for p in m.parameters()]
    grads = [p.grad for p in params if p.grad is not None]
    opt_state = [
        v
        for opt in engine.optimizers
        for s in opt.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    ]
    out = {"parameters": size(params), "gradients": size(grads), "optimizer": size(opt_state)}
    out["total"] = sum(out.values())
    return out


def measure(args: argparse.Namespace, precision: str, out: Path) -> dict[str, Any]:
    """Train one arm; returns its numbers."""
    device = resolve_device(args.device)
    cfg = run_config(args, precision)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = current_rss_mb()
    engine = Engine(cfg, out, RankContext(0, 1, 0, device, False), Console(quiet=True))
    engine.setup()
    rows = []
    for _ in range(args.warmup):
        rows.append(engine.train_step())
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        rows.append(engine.train_step())
    sync(device)
    wall = time.perf_counter() - start
    timed = rows[args.warmup :]
    result: dict[str, Any] = {
        "precision": precision,
        "tokens_per_second": round(statistics.median(r["tokens_per_second"] for r in timed), 2),
        "wall_tokens_per_second": round(sum(r["tokens"] for r in timed) / wall, 2),
        "median_step_ms": round(
            1e3 * statistics.median(r["tokens"] / r["tokens_per_second"] for r in timed), 3
        ),
        "mfu": round(statistics.median(r["mfu"] for r in timed), 5),
        "losses": [round(r["loss"], 5) for r in rows],
        "overflows": rows[-1]["overflows"],
        "loss_scale": rows[-1]["loss_scale"],
    }
    # The engine may reset its high-water mark every step: take the highest step, and on CUDA
    # also the counter itself, which covers the last step's optimizer update too.
    peak = max(r["peak_memory_mb"] for r in rows)
    if device.type == "cuda":
        peak = max(peak, torch.cuda.max_memory_allocated(device) / 2**20)
        result["peak_memory_mb"] = round(peak, 1)
        result["peak_reserved_mb"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    elif not args.in_process:
        result["peak_memory_mb"] = round(peak, 1)
        result["rss_before_setup_mb"] = round(rss_before, 1)
    result["state_bytes"] = state_bytes(engine)
    result["saved_for_backward"] = saved_for_backward(engine)
    del engine
    gc.collect()
    return result


def ratios(arms: dict[str, dict[str, Any]], base: str = "fp32") -> dict[str, dict[str, float]]:
    """Each precision's numbers over fp32's."""

    def r(a: float | None, b: float | None) -> float | None:
        return round(a / b, 4) if a is not None and b else None

    ref = arms[base]
    out = {}
    for name, arm in arms.items():
        if name == base:
            continue
        saved, ref_saved = arm["saved_for_backward"], ref["saved_for_backward"]
        out[f"{name}/{base}"] = {
            "tokens_per_second": r(arm["tokens_per_second"], ref["tokens_per_second"]),
            "wall_tokens_per_second": r(
                arm["wall_tokens_per_second"], ref["wall_tokens_per_second"]
            ),
            "peak_memory": r(arm.get("peak_memory_mb"), ref.get("peak_memory_mb")),
            "saved_activations": r(saved["activations"], ref_saved["activations"]),
            "saved_activations_and_casts": r(
                saved["activations_and_casts"], ref_saved["activations_and_casts"]
            ),
            "state_bytes": r(arm["state_bytes"]["total"], ref["state_bytes"]["total"]),
        }
    return out


def child_args(args: argparse.Namespace, precision: str, out: Path) -> list[str]:
    cmd = [sys.executable, __file__, "--child", precision, "--out", str(out)]
    for flag in ("device", "steps", "warmup", "d_model", "layers", "seq_len", "batch"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cmd += ["--threads", str(args.threads), "--docs", str(args.docs)]
    return cmd


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--steps", type=int, help="timed steps per arm (default by device)")
    parser.add_argument("--warmup", type=int, help="untimed steps before them")
    parser.add_argument("--d-model", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--batch", type=int, help="sequences per step")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU only: torch threads (1 keeps timings steady on a shared machine)",
    )
    parser.add_argument("--docs", type=int, default=4000, help="demo reviews to tokenize")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per arm")
    parser.add_argument("--child", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    args.device = device.type
    names = ("d_model", "layers", "seq_len", "batch", "steps", "warmup")
    for name, default in zip(names, DEFAULTS[device.type], strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.child:  # one arm, in its own process; the parent reads the last stdout line
        result = measure(args, args.child, Path(args.out))
        print(json.dumps(result))
        return result

    precisions = list(dict.fromkeys(["fp32", *args.precisions]))  # fp32: the ratios' base
    arms: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mixed-precision-") as tmp:
        out = Path(tmp)
        log("preparing data")
        prepare_data(run_config(args, "fp32"), out / "data")  # the arms find it up to date
        for precision in precisions:
            log(f"{precision}: training {args.warmup} + {args.steps} steps on {device.type}")
            if args.in_process:
                arms[precision] = measure(args, precision, out)
            else:
                proc = subprocess.run(
                    child_args(args, precision, out), capture_output=True, text=True
                )
                if proc.returncode:
                    raise SystemExit(f"{precision} arm failed:\n{proc.stderr[-4000:]}")
                arms[precision] = json.loads(proc.stdout.strip().splitlines()[-1])
            log(f"{precision}: {arms[precision]['tokens_per_second']:.1f} tok/s")
    fp32_losses = arms["fp32"]["losses"]
    for arm in arms.values():
        arm["max_abs_loss_diff_vs_fp32"] = round(
            max(abs(a - b) for a, b in zip(arm["losses"], fp32_losses, strict=True)), 5
        )
    report = {
        "device": describe_device(device),
        "model": {
            "d_model": args.d_model,
            "layers": args.layers,
            "seq_len": args.seq_len,
            "batch": args.batch,
            "tokens_per_step": args.seq_len * args.batch,
        },
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads if device.type == "cpu" else None,
        "isolated": not args.in_process,
        "arms": arms,
        "ratios": ratios(arms),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
