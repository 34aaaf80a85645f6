"""Built-in run configurations for `lmforge demo`, so the demo works from an installed package.

`configs/demo.yaml` and `configs/demo-quick.yaml` mirror these (a test keeps them equal).
"""

from __future__ import annotations

import copy
from typing import Any

DEMO: dict[str, Any] = {
    "workdir": "runs/demo",
    "corpus": {"docs": 40000, "noise_rate": 0.37, "seed": 0},
    "train": {
        "max_steps": 2000,
        "batch_size": 64,
        "lr": 2e-3,
        "eval_every": 250,
        "checkpoint_every": 250,
        "model": {"d_model": 128, "n_layers": 2, "n_heads": 4, "d_ff": 256, "max_len": 128},
    },
    "compress": {"latency_repeats": 30},
    "bench": {"duration_s": 15.0, "concurrency": 8},
}

DEMO_QUICK: dict[str, Any] = {
    "workdir": "runs/demo-quick",
    "corpus": {"docs": 5000, "noise_rate": 0.37, "seed": 0},
    "train": {
        "max_steps": 500,
        "batch_size": 32,
        "warmup_steps": 50,
        "eval_every": 100,
        "checkpoint_every": 100,
        "tokenizer": {"vocab_size": 4000},
        "model": {"d_model": 96, "n_layers": 2, "n_heads": 4, "d_ff": 192, "max_len": 96},
    },
    "compress": {"latency_repeats": 10},
    "bench": {"duration_s": 5.0, "concurrency": 4, "warmup_s": 0.5},
}


def demo_preset(quick: bool) -> dict[str, Any]:
    return copy.deepcopy(DEMO_QUICK if quick else DEMO)
