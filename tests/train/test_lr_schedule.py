import itertools
import json
import math

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.train.schedule import build_scheduler, warmup_cosine_factor


def lrs(warmup: int, total: int, floor: float, lr: float = 1.0) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(opt, warmup, total, floor)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_is_linear_and_reaches_the_peak():
    values = lrs(warmup=4, total=20, floor=0.1, lr=2.0)
    assert values[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_cosine_decays_monotonically_to_the_floor():
    values = lrs(warmup=5, total=50, floor=0.1)
    decay = values[4:]
    assert all(b <= a for a, b in itertools.pairwise(decay))
    assert values[-1] == pytest.approx(0.1)
    mid = 5 + (50 - 5 - 1) / 2
    assert warmup_cosine_factor(int(mid), 5, 50, 0.1) == pytest.approx(0.55, abs=0.02)
    assert warmup_cosine_factor(500, 5, 50, 0.1) == pytest.approx(0.1)  # past the end


def test_no_warmup_starts_at_full_lr_and_single_step_is_safe():
    assert lrs(warmup=0, total=10, floor=0.0)[0] == 1.0
    assert math.isfinite(warmup_cosine_factor(0, 0, 1, 0.0))


def test_state_is_json_and_restores():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, 3, 30, 0.1)
    for _ in range(7):
        opt.step()
        sched.step()
    state = json.loads(json.dumps(sched.state_dict()))
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_scheduler(opt2, 3, 30, 0.1)
    sched2.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_bad_settings_name_the_value():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match="max_steps=0"):
        build_scheduler(opt, 0, 0, 0.1)
    with pytest.raises(ConfigError, match="min_lr_ratio=2"):
        build_scheduler(opt, 0, 10, 2)
