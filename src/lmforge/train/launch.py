"""Start a training run: in this process for one rank, under torchrun for several.

`lmforge train CONFIG --nproc N --out RUN` checks the config and the layout here first (so
a mistake is one line, not N tracebacks), then runs `torch.distributed.run --standalone`
with N local ranks on `python -m lmforge.train`. Several machines use torchrun directly:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        -m lmforge.train CONFIG --out RUN
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from lmforge.errors import ConfigError
from lmforge.parallel.dims import ParallelDims
from lmforge.train.run_config import TrainRunConfig, check_batch_shape


def check_layout(cfg: TrainRunConfig, nproc: int) -> ParallelDims:
    p = cfg.parallel
    dims = ParallelDims.resolve(nproc, p.dp_replicate, p.dp_shard, p.tp, p.pp)
    check_batch_shape(cfg, dims)
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ConfigError(
            f"--nproc {nproc} but only {torch.cuda.device_count()} GPUs are visible; use at "
            "most one rank per GPU"
        )
    return dims


def launch(
    config: Path | None, out: Path, nproc: int, sets: list[str], max_restarts: int = 0
) -> int:
    """Run the ranks; returns the exit status (0 when every rank finished)."""
    if nproc == 1:
        from lmforge.train.__main__ import run_rank

        return run_rank(config, out, sets)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "-m",
        "lmforge.train",
        *([str(config)] if config is not None else []),
        "--out",
        str(out),
    ]
    for item in sets:
        cmd += ["--set", item]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        # N ranks share the cores: one thread each unless told otherwise, or they thrash.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("TORCHELASTIC_ERROR_FILE", str(out / "rank-error.json"))
    return subprocess.call(cmd, env=env)
