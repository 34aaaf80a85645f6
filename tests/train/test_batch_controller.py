import json
import random

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models import EncoderClassifier, EncoderConfig
from lmforge.train.batch_controller import (
    ControllerSettings,
    MicroBatchController,
    MicroBatchOutOfMemoryError,
    SimulatedOutOfMemoryError,
    divisors,
    is_out_of_memory,
    split_microbatches,
)

GiB = 2**30


def controller(**kw) -> MicroBatchController:
    settings = {"per_rank_batch": 48, "memory_cap_bytes": 10 * GiB, "patience": 2, **kw}
    return MicroBatchController(ControllerSettings(**settings))


def run(ctrl: MicroBatchController, steps: int, peak_of, rate_of=lambda m: 1000.0) -> None:
    """Drive the controller like the engine: peak and tokens/s as functions of micro."""
    for _ in range(steps):
        ctrl.after_step(peak_of(ctrl.micro), step_seconds=1.0, tokens=rate_of(ctrl.micro))
        assert ctrl.micro * ctrl.accum == ctrl.settings.per_rank_batch


# -- split_microbatches and the gradient it must preserve --------------------------------------


def test_split_microbatches_slices_every_tensor_along_rows():
    batch = {"x": torch.arange(20).view(10, 2), "y": torch.arange(10), "note": "kept"}
    parts = split_microbatches(batch, 4)
    assert [len(p["y"]) for p in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([p["x"] for p in parts]), batch["x"])
    assert all(p["note"] == "kept" for p in parts)
    with pytest.raises(ConfigError, match="micro=0"):
        split_microbatches(batch, 0)


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("micro", [1, 2, 3, 5, 7, 12])
def test_accumulated_gradient_equals_full_batch_gradient(micro):
    torch.manual_seed(0)
    cfg = EncoderConfig(
        vocab_size=50,
        n_classes=3,
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_ff=32,
        max_len=16,
        dropout=0.0,  # both passes must compute the same function
    )
    model = EncoderClassifier(cfg)  # float32, as trained
    lengths = torch.randint(2, 17, (12,))
    mask = (torch.arange(16)[None, :] < lengths[:, None]).long()
    batch = {
        "input_ids": torch.randint(1, 50, (12, 16)) * mask,
        "attention_mask": mask,
        "labels": torch.randint(0, 3, (12,)),
    }
    logits = model(batch["input_ids"], batch["attention_mask"])
    F.cross_entropy(logits, batch["labels"]).backward()  # mean over the 12 examples
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    total = len(batch["labels"])
    for mb in split_microbatches(batch, micro):
        logits = model(mb["input_ids"], mb["attention_mask"])
        # Sum over the micro-batch, divided by the WHOLE batch's count: not a mean per chunk.
        (F.cross_entropy(logits, mb["labels"], reduction="sum") / total).backward()
    for g_full, g_acc in zip(full, _grads(model), strict=True):
        assert torch.allclose(g_acc, g_full, atol=1e-6, rtol=0), micro


@pytest.mark.parametrize("micro", [1, 2, 4])
def test_token_normalised_lm_gradient_is_split_invariant(micro):
    """LM batches weigh tokens: normalise by the batch's real-token count, not per chunk."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Embedding(30, 8), torch.nn.Linear(8, 30)).double()
    ids = torch.randint(0, 30, (8, 6))
    labels = torch.randint(0, 30, (8, 6))
    labels[5:, 3:] = -100  # padded tail positions
    batch = {"input_ids": ids, "labels": labels}
    logits = model(ids)
    F.cross_entropy(logits.view(-1, 30), labels.view(-1)).backward()
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    n_tokens = int((labels != -100).sum())
    for mb in split_microbatches(batch, micro):
        out = model(mb["input_ids"]).view(-1, 30)
        (F.cross_entropy(out, mb["labels"].view(-1), reduction="sum") / n_tokens).backward()
    for g_full, g_acc in zip(full, _grads(model), strict=True):
        assert torch.allclose(g_acc, g_full, atol=1e-6, rtol=0)


# -- the controller policy ---------------------------------------------------------------------


def test_start_size_from_settings_or_estimate():
    assert divisors(48) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 48]
    assert controller().micro == 1
    assert controller(initial_micro=6).micro == 6
    # (1 - 0.25) x 10 GiB - 1 GiB = 6.5 GiB of activations at 0.5 GiB each -> 13 -> divisor 12
    est = controller(bytes_per_example=GiB / 2, base_bytes=GiB)
    assert est.micro == 12 and est.accum == 4
    with pytest.raises(ConfigError, match=r"initial_micro=5 .* 48; use one of \[1, 2, 3"):
        controller(initial_micro=5)


def test_grows_one_divisor_at_a_time_after_patience_steps_with_headroom():
    ctrl = controller(initial_micro=2)
    run(ctrl, 1, peak_of=lambda m: 1 * GiB)
    assert ctrl.micro == 2  # one calm step is not enough (patience 2)
    run(ctrl, 1, peak_of=lambda m: 1 * GiB)
    assert ctrl.micro == 3
    run(ctrl, 2, peak_of=lambda m: 8 * GiB)  # between the thresholds: hold
    assert ctrl.micro == 3
    assert [(d["old"], d["new"], d["reason"]) for d in ctrl.decisions] == [
        (None, 2, "initial"),
        (2, 3, "grow"),
    ]
    assert ctrl.decisions[1]["step"] == 2 and ctrl.decisions[1]["peak_bytes"] == GiB


def test_settles_below_the_cap_when_memory_grows_with_micro():
    ctrl = controller(initial_micro=1)
    run(ctrl, 60, peak_of=lambda m: GiB + m * 0.4 * GiB)  # 24 -> 10.6 GiB: above high water
    # 16 (7.4 GiB) is under the 7.5 GiB grow line, so it tries 24 (10.6 GiB > 9 GiB high
    # water), shrinks back and never tries 24 again.
    assert ctrl.micro == 16
    reasons = [d["reason"] for d in ctrl.decisions]
    assert "high_water" in reasons and ctrl.ceiling == 24


def test_shrinks_at_high_water_and_never_returns_to_that_size():
    ctrl = controller(initial_micro=12)
    run(ctrl, 1, peak_of=lambda m: 9.5 * GiB)  # > 0.9 x 10 GiB
    assert ctrl.micro == 8 and ctrl.ceiling == 12
    run(ctrl, 10, peak_of=lambda m: 1 * GiB)
    assert ctrl.micro == 8  # 12 is known not to fit


def test_oom_halves_and_the_step_is_retried_not_counted():
    # 12 x 0.4 GiB = 4.8 GiB sits between the grow line (4.5) and high water (5.4).
    ctrl = controller(initial_micro=24, memory_cap_bytes=6 * GiB, fake_oom_bytes=6 * GiB)
    per_example = 0.4 * GiB
    steps_done, examples_done = 0, []
    while steps_done < 10:
        step_start = ctrl.step
        try:
            processed = 0
            for _ in range(ctrl.accum):  # the engine's micro-batch loop
                ctrl.check_fake_oom(ctrl.micro * per_example)
                processed += ctrl.micro
        except SimulatedOutOfMemoryError as exc:
            assert is_out_of_memory(exc)
            ctrl.on_oom()
            assert ctrl.step == step_start  # same step again
            continue
        ctrl.after_step(ctrl.micro * per_example, 1.0, 100)
        steps_done += 1
        examples_done.append(processed)
    assert examples_done == [48] * 10  # every step saw the whole per-rank batch once
    ooms = [d for d in ctrl.decisions if d["reason"] == "oom"]
    assert [(d["old"], d["new"], d["step"]) for d in ooms] == [(24, 12, 0)]
    assert ctrl.micro == 12 and ctrl.ceiling == 24


def test_oom_at_micro_one_names_the_cap():
    ctrl = controller(per_rank_batch=4, initial_micro=2)
    assert ctrl.on_oom() == 1
    with pytest.raises(MicroBatchOutOfMemoryError, match=r"micro-batch 1 .*10737418240 bytes"):
        ctrl.on_oom()


def test_steps_back_and_freezes_when_growth_costs_throughput():
    ctrl = controller(initial_micro=4, throughput_tolerance=0.05)
    rates = {4: 1000.0, 6: 1100.0, 8: 900.0, 12: 5000.0}
    run(ctrl, 30, peak_of=lambda m: GiB, rate_of=lambda m: rates[m])
    moves = [(d["old"], d["new"], d["reason"]) for d in ctrl.decisions[1:]]
    assert moves == [(4, 6, "grow"), (6, 8, "grow"), (8, 6, "throughput_fell")]
    assert ctrl.micro == 6 and ctrl.frozen  # 12 would have been faster, but growth stopped


def test_small_throughput_dip_within_tolerance_keeps_growing():
    ctrl = controller(initial_micro=4, throughput_tolerance=0.05)
    run(ctrl, 30, peak_of=lambda m: GiB, rate_of=lambda m: 1000.0 - m)  # < 1% per growth
    assert ctrl.micro == 48 and not ctrl.frozen


def test_micro_times_accum_is_constant_under_random_pressure():
    rng = random.Random(0)
    for per_rank in (1, 7, 12, 32, 60):
        ctrl = controller(per_rank_batch=per_rank, patience=1)
        for _ in range(300):
            if rng.random() < 0.05 and ctrl.micro > 1:
                ctrl.on_oom()
            else:
                ctrl.after_step(rng.uniform(0, 11) * GiB, rng.uniform(0.5, 2), 1000)
            assert ctrl.micro * ctrl.accum == per_rank
            assert per_rank % ctrl.micro == 0


def test_state_round_trip_continues_identically():
    seen = []
    a = controller(initial_micro=2)
    a.on_decision = seen.append
    peak = lambda m: GiB + m * 0.5 * GiB  # noqa: E731
    rate = lambda m: 1000.0 + 10 * m  # noqa: E731
    run(a, 5, peak, rate)
    state = json.loads(json.dumps(a.state_dict()))  # survives a JSON checkpoint too
    b = controller(initial_micro=2)
    b.load_state_dict(state)
    assert (b.micro, b.step, b.decisions) == (a.micro, a.step, a.decisions)
    run(a, 20, peak, rate)
    run(b, 20, peak, rate)
    assert b.decisions == a.decisions and b.micro == a.micro
    assert seen == a.decisions[1:]  # the callback saw every decision after construction
    with pytest.raises(ConfigError, match="per-rank batch 48, this run has 32"):
        controller(per_rank_batch=32).load_state_dict(state)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="memory_cap_bytes=0"):
        controller(memory_cap_bytes=0)
    with pytest.raises(ConfigError, match="overlap"):
        controller(headroom=0.05, high_water=0.9)
