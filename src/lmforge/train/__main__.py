"""One rank of a training run: `python -m lmforge.train CONFIG --out RUN [--set k=v ...]`.

torchrun starts one of these per rank (it sets RANK, WORLD_SIZE, MASTER_ADDR, ...);
`lmforge train` calls `run_rank` directly for a single process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmforge.errors import LmforgeError

# The shell's code for "terminated by SIGTERM": the run saved a checkpoint but did not finish.
STOPPED_BY_SIGTERM = 143


def run_rank(config: Path | None, out: Path, sets: list[str]) -> int:
    import torch.distributed as dist
    from rich.console import Console

    from lmforge.train.engine import Engine, init_distributed
    from lmforge.train.run_config import load_run_config
    from lmforge.workspace import atomic_write_json

    cfg = load_run_config(config, sets)
    ctx = init_distributed()
    console = Console(stderr=True, quiet=not ctx.is_main)
    try:
        engine = Engine(cfg, out, ctx, console)
        result = engine.fit()
        if ctx.distributed:
            dist.barrier()
    finally:
        if ctx.distributed and dist.is_initialized():
            dist.destroy_process_group()
    if result["stopped_early"]:
        return STOPPED_BY_SIGTERM
    if ctx.is_main and cfg.train.export:
        from lmforge.train.run_export import export_run

        summary = export_run(cfg, out)
        engine_rows = [r for r in engine.rows if r.get("kind") == "train"]
        if engine_rows:
            last = engine_rows[-1]
            summary |= {"steps": last["step"], "final_loss": last["loss"]}
        with (out / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(
                json.dumps(
                    {
                        "kind": "eval",
                        "step": result["steps"],
                        "final": True,
                        **{k: v for k, v in summary.items() if k.startswith("eval_")},
                    }
                )
                + "\n"
            )
        atomic_write_json(out / "summary.json", summary)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if isinstance(v, float))
        console.print(f"done: {shown}; model in {summary['model_dir']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.train", description=__doc__)
    parser.add_argument("config", nargs="?", type=Path, help="training-run config (YAML)")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="key=value")
    args = parser.parse_args(argv)
    try:
        return run_rank(args.config, args.out, args.sets)
    except LmforgeError as exc:
        import os

        if os.environ.get("RANK", "0") == "0":
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
