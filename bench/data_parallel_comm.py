"""Communication share, bytes per step and tokens/s of DDP vs FSDP2 training on 1, 2, 4 ranks.

Runs the real training engine (`lmforge.train.engine.Engine`: decoder LM, AdamW, clipping,
fp32) on N gloo ranks on this machine's CPUs and prints ONE JSON object:

    python bench/data_parallel_comm.py [--ranks 1 2 4] [--modes ddp fsdp] [--steps 8]
        [--warmup 2] [--d-model 256] [--layers 4] [--vocab 4000] [--seq-len 128]

Each rank calls `engine.setup()`, then loops `engine.train_step()` itself with a
`CommMeter` installed (and attached to the DDP wrapper's comm hook), taking the meter after
every step. Per rank: the median over the steps after `--warmup` of communication seconds /
step seconds, then the mean over ranks. The global batch is the same for every rank count
(strong scaling), so tokens/s compare directly; a step's time is its slowest rank's.

Communication time is what the meter sees: on gloo, FSDP2's collectives block, so their
time is exposed; DDP's bucket all-reduces run on gloo's threads during backward, timed from
launch to completion (in flight, possibly overlapped with compute). Bytes are per rank per
step: contributed (all-reduce tensor, all-gather shard, reduce-scatter full input) and a
ring estimate of bytes on the wire, next to the analytic expectation from parameter counts
(fp32): DDP all-reduces every gradient (P); FSDP2 all-gathers the root-owned parameters (R)
once and each block (B in total) twice (forward, and backward after reshard), and
reduce-scatters every gradient. Padding of shards and the engine's scalar all-reduces (loss,
grad norm) are left out of the analytic numbers. Ranks share the machine's cores: with more
ranks than cores, "communication" includes waiting for a descheduled peer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rich.console import Console

from lmforge.parallel.comm_meter import CommMeter
from lmforge.parallel.protocol import model_layers
from lmforge.train.engine import Engine, RankContext
from lmforge.train.run_config import TrainRunConfig
from lmforge.train.tasks import prepare_data

MODES = {
    "ddp": lambda n: {"dp_replicate": n, "dp_shard": 1},
    "fsdp": lambda n: {"dp_replicate": 1, "dp_shard": n},
}


def run_config(args: argparse.Namespace, world: int, mode: str) -> dict[str, Any]:
    d = args.d_model
    return {
        "model": {
            "arch": "decoder",
            "preset": "tiny",
            "overrides": {
                "d_model": d,
                "n_layers": args.layers,
                "n_heads": max(1, d // 64),
                "n_kv_heads": max(1, d // 128),
                "d_ff": 3 * d,
                "max_seq_len": args.seq_len,
            },
        },
        "data": {
            "source": "demo",
            "docs": args.docs,
            "seq_len": args.seq_len,
            "vocab_size": args.vocab,
        },
        "parallel": MODES[mode](world) if world > 1 else {},
        "train": {
            "global_batch_size": args.batch_size,
            "max_steps": args.warmup + args.steps,
            "warmup_steps": 0,
            "checkpoint_every": 0,
            "eval_every": 0,
            "export": False,
        },
    }


def _rank(rank: int, world: int, port: int, raw: dict, out: str, threads: int, warmup: int) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    try:
        cfg = TrainRunConfig.model_validate(raw)
        ctx = RankContext(rank, world, rank, torch.device("cpu"), world > 1)
        engine = Engine(cfg, out, ctx, Console(quiet=True))
        engine.setup()
        # The engine meters every distributed run itself; take its meter over so the per-op
        # breakdown is read here (the engine's rows then carry no comm fields).
        meter, engine.comm = engine.comm, None
        if meter is None:
            meter = CommMeter().install()
        model = engine.parts[0]
        total = sum(p.numel() for p in model.parameters())  # DTensor numel is the global one
        blocks = sum(p.numel() for p in model_layers(model).parameters())
        steps = []
        for _ in range(cfg.train.max_steps):
            started = time.perf_counter()
            row = engine.train_step()
            seconds = time.perf_counter() - started
            comm = meter.take()
            steps.append(
                {
                    "seconds": seconds,
                    "comm_seconds": min(comm["seconds"], seconds),
                    "bytes": comm["bytes"],
                    "wire_bytes": comm["wire_bytes"],
                    "by_op": {
                        k: [v["calls"], v["bytes"], v["seconds"]] for k, v in comm["by_op"].items()
                    },
                    "tokens": row["tokens"],
                    "loss": row["loss"],
                }
            )
        meter.uninstall()
        result = {
            "params": total,
            "block_params": blocks,
            "vocab_size": engine.model_config.vocab_size,
            "steps": steps[warmup:],
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        if world > 1:
            dist.barrier()  # nobody tears down the group while a peer still talks to it
    finally:
        if world > 1:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(world: int, raw: dict, out: Path, threads: int, warmup: int, timeout: float) -> None:
    # fork: a spawned rank spends seconds re-importing torch on shared cores; the parent has
    # no process group and has run no torch kernels, so forking it is safe
    ctx = mp.start_processes(
        _rank,
        args=(world, _free_port(), raw, str(out), threads, warmup),
        nprocs=world,
        join=False,
        start_method="fork",
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in ctx.processes:
                process.kill()
            raise TimeoutError(f"{world} ranks did not finish in {timeout:.0f}s")


def expected(mode: str, world: int, params: int, blocks: int) -> dict[str, int]:
    """Analytic fp32 bytes per rank per step (see the module docstring)."""
    full, n = 4 * params, world
    if world == 1:
        return {"bytes": 0, "wire_bytes": 0}
    if mode == "ddp":
        return {"bytes": full, "wire_bytes": round(2 * (n - 1) / n * full)}
    gathered = 4 * (params - blocks) + 2 * 4 * blocks  # root once, blocks twice
    return {
        "bytes": round(gathered / n + full),
        "wire_bytes": round((n - 1) / n * (gathered + full)),
    }


def summarize(ranks: list[dict[str, Any]], mode: str, world: int) -> dict[str, Any]:
    def med(rank: dict, key: str) -> float:
        return statistics.median(s[key] for s in rank["steps"])

    shares = [
        statistics.median(s["comm_seconds"] / s["seconds"] for s in r["steps"]) for r in ranks
    ]
    # a step ends on every rank together (the last collective), so its time is the slowest's
    step_seconds = statistics.median(
        max(r["steps"][i]["seconds"] for r in ranks) for i in range(len(ranks[0]["steps"]))
    )
    tokens = ranks[0]["steps"][0]["tokens"]
    # per op: median over steps of [calls, bytes, seconds] on each rank, then mean over ranks
    by_op: dict[str, dict[str, float]] = {}
    for name in sorted({k for r in ranks for s in r["steps"] for k in s["by_op"]}):
        per_rank = [
            [
                statistics.median(s["by_op"].get(name, [0, 0, 0.0])[i] for s in r["steps"])
                for r in ranks
            ]
            for i in range(3)
        ]
        calls, nbytes, seconds = (statistics.mean(v) for v in per_rank)
        by_op[name] = {"calls": calls, "bytes": round(nbytes), "seconds": round(seconds, 4)}
    measured = {
        "bytes": round(statistics.mean(med(r, "bytes") for r in ranks)),
        "wire_bytes": round(statistics.mean(med(r, "wire_bytes") for r in ranks)),
    }
    return {
        "comm_share": round(statistics.mean(shares), 4),
        "comm_share_per_rank": [round(s, 4) for s in shares],
        "comm_seconds": round(statistics.mean(med(r, "comm_seconds") for r in ranks), 4),
        "step_seconds": round(step_seconds, 4),
        "tokens_per_step": tokens,
        "tokens_per_second": round(tokens / step_seconds, 1),
        "bytes_per_rank_step": measured,
        "expected_bytes_per_rank_step": expected(
            mode, world, ranks[0]["params"], ranks[0]["block_params"]
        ),
        "by_op_per_rank_step": by_op,
        "final_loss": round(ranks[0]["steps"][-1]["loss"], 4),
        "meets_15pct_target": statistics.mean(shares) < 0.15,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["ddp", "fsdp"])
    parser.add_argument("--steps", type=int, default=8, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped before measuring")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--docs", type=int, default=2000, help="demo reviews to tokenize")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    args = parser.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # no tokenizer threads in forked ranks
    cores = os.cpu_count() or 1
    report: dict[str, Any] = {
        "model": {"d_model": args.d_model, "layers": args.layers, "vocab": args.vocab},
        "seq_len": args.seq_len,
        "global_batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "cores": cores,
        "backend": "gloo",
        "torch": torch.__version__,
        "target": "comm_share < 0.15 of step time",
        "runs": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp, "data")
        prepare_data(TrainRunConfig.model_validate(run_config(args, 1, "ddp")), cache)
        for world in args.ranks:
            for mode in ["single"] if world == 1 else args.modes:
                raw = run_config(args, world, "ddp" if mode == "single" else mode)
                out = Path(tmp, f"{mode}-{world}")
                shutil.copytree(cache, out / "data")
                threads = args.threads
                print(f"{mode} x {world} ranks ({threads} threads each)", file=sys.stderr)
                launch(world, raw, out, threads, args.warmup, args.timeout)
                ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
                if not report.get("params"):
                    for key in ("params", "block_params", "vocab_size"):
                        report[key] = ranks[0][key]
                run = summarize(ranks, mode, world)
                run["threads_per_rank"] = threads
                report["runs"][f"{mode}_{world}"] = run
                print(f"  {json.dumps(run)}", file=sys.stderr)
    for world in args.ranks:
        ddp, fsdp = report["runs"].get(f"ddp_{world}"), report["runs"].get(f"fsdp_{world}")
        if ddp and fsdp:
            report.setdefault("fsdp_over_ddp", {})[str(world)] = {
                key: round(
                    fsdp["bytes_per_rank_step"][key] / max(ddp["bytes_per_rank_step"][key], 1), 3
                )
                for key in ("bytes", "wire_bytes")
            }
    oversubscribed = [w for w in args.ranks if w > cores]
    report["note"] = f"{cores} cores shared by all ranks (and other jobs)" + (
        f"; {oversubscribed} ranks oversubscribe them" if oversubscribed else ""
    )
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
