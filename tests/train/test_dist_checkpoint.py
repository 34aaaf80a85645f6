"""Distributed checkpoints: exact resume, resharding across FSDP2 / TP / pipeline parts / one
process, coverage errors, atomic publish and the SIGTERM flag. Multi-rank cases run gloo on CPU."""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)

from dist_helpers import run_ranks
from lmforge.train.checkpoint import CheckpointError
from lmforge.train.dist_checkpoint import (
    TerminationFlag,
    latest_dist_checkpoint,
    list_dist_checkpoints,
    load_dist_checkpoint,
    read_dist_state,
    save_dist_checkpoint,
)

VOCAB, DIM = 32, 16


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(DIM, 2 * DIM)
        self.down = nn.Linear(2 * DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class TinyLM(nn.Module):
    """Embedding, blocks in a ModuleDict keyed "0".."3", head; parts set what they lack to None."""

    def __init__(self, seed: int, head_bias: bool = True) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleDict({str(i): Block() for i in range(4)})
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=head_bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for layer in self.layers.values():
            h = layer(h)
        return self.head(self.norm(h))


def adamw(model: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=True)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    tokens = torch.randint(0, VOCAB, (4, 9), generator=torch.Generator().manual_seed(seed))
    logits = model(tokens[:, :-1])
    F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1)).backward()
    opt.step()
    opt.zero_grad()


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Full (gathered) model and optimizer tensors by FQN; empty on ranks other than 0."""
    gathered = dist.is_initialized()
    opts = StateDictOptions(full_state_dict=gathered, cpu_offload=gathered)
    flat = StateDictOptions(
        full_state_dict=gathered, cpu_offload=gathered, flatten_optimizer_state_dict=True
    )
    out = {f"model.{k}": v for k, v in get_model_state_dict(model, options=opts).items()}
    for k, v in get_optimizer_state_dict(model, opt, options=flat).items():
        if isinstance(v, torch.Tensor):
            out[f"optim.{k}"] = v
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def fsdp2(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for block in model.layers.values():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def tensor_parallel(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for block in model.layers.values():
        parallelize_module(block, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
    return model


def write_snapshot(rank: int, snap: dict[str, torch.Tensor], path: Path) -> None:
    if rank == 0:
        save_file(snap, str(path))


# -- 1. single process: exact resume ------------------------------------------------------------


def test_single_process_resume_is_exact(tmp_path):
    model = TinyLM(seed=0)
    opt = adamw(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** (s + 1))
    train_step(model, opt, seed=1)
    sched.step()  # lr now differs from the value a fresh optimizer starts with
    extra = {"step": 1, "data_position": 4, "scheduler": sched.state_dict(), "run": {"id": "x"}}
    path = save_dist_checkpoint(tmp_path, 1, [model], [opt], extra)
    draws_after_save = torch.rand(3)

    fresh = TinyLM(seed=7)
    fresh_opt = adamw(fresh)
    assert read_dist_state(path)["step"] == 1
    loaded_extra = load_dist_checkpoint(path, [fresh], [fresh_opt])

    assert loaded_extra == extra
    assert torch.equal(torch.rand(3), draws_after_save)  # generators restored too
    assert_same(snapshot(fresh, fresh_opt), snapshot(model, opt))
    assert fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 2.5e-3
    assert fresh_opt.param_groups[0]["betas"] == (0.9, 0.999)
    train_step(model, opt, seed=2)
    train_step(fresh, fresh_opt, seed=2)
    assert_same(snapshot(fresh, fresh_opt), snapshot(model, opt))


# -- 2. FSDP2 <-> single process ----------------------------------------------------------------


def _fsdp_ranks(rank: int, world: int, root: Path) -> None:
    # single -> FSDP2: load what the parent saved into a sharded model
    model = fsdp2(TinyLM(seed=5))
    opt = adamw(model)
    load_dist_checkpoint(latest_dist_checkpoint(root / "single"), [model], [opt])
    write_snapshot(rank, snapshot(model, opt), root / "single-into-fsdp.safetensors")
    # FSDP2 -> single: train a sharded model and save it
    model = fsdp2(TinyLM(seed=0))
    opt = adamw(model)
    train_step(model, opt, seed=rank + 1)  # ranks see different data, as in data parallel
    save_dist_checkpoint(root / "fsdp", 1, [model], [opt], {"step": 1})
    write_snapshot(rank, snapshot(model, opt), root / "fsdp-ref.safetensors")
    # A write failing on one rank fails the save on every rank instead of hanging the others.
    bad_rng = ({"rng.torch": "not a tensor"}, {}) if rank == 1 else None
    with pytest.raises(CheckpointError, match="writing RNG and state files failed on"):
        save_dist_checkpoint(root / "fsdp", 2, [model], [opt], {"step": 2}, rng=bad_rng)
    assert latest_dist_checkpoint(root / "fsdp") == root / "fsdp" / "step-000001"
    if rank == 0:
        assert not (root / "fsdp" / ".tmp-step-000002").exists()
    # A SIGTERM seen by one rank stops all of them at the same step.
    flag = TerminationFlag()
    flag.requested = rank == 1
    assert flag.requested_on_any_rank()


@pytest.mark.timeout(120)
def test_fsdp2_and_single_process_load_each_other(tmp_path):
    model = TinyLM(seed=3)
    opt = adamw(model)
    train_step(model, opt, seed=1)
    save_dist_checkpoint(tmp_path / "single", 1, [model], [opt], {"step": 1})

    run_ranks(_fsdp_ranks, 2, tmp_path)

    assert_same(load_file(str(tmp_path / "single-into-fsdp.safetensors")), snapshot(model, opt))
    plain = TinyLM(seed=9)
    plain_opt = adamw(plain)
    assert load_dist_checkpoint(latest_dist_checkpoint(tmp_path / "fsdp"), [plain], [plain_opt])
    assert_same(snapshot(plain, plain_opt), load_file(str(tmp_path / "fsdp-ref.safetensors")))


# -- 3. tensor parallel -> FSDP2 and -> single process ------------------------------------------


def _tp_ranks(rank: int, world: int, root: Path) -> None:
    model = tensor_parallel(TinyLM(seed=0))
    # foreach AdamW cannot mix the plain embedding/head tensors with the blocks' DTensors.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    train_step(model, opt, seed=1)
    save_dist_checkpoint(root / "tp", 1, [model], [opt], {"step": 1})
    write_snapshot(rank, snapshot(model, opt), root / "tp-ref.safetensors")

    model = fsdp2(TinyLM(seed=5))
    opt = adamw(model)
    load_dist_checkpoint(latest_dist_checkpoint(root / "tp"), [model], [opt])
    write_snapshot(rank, snapshot(model, opt), root / "tp-into-fsdp.safetensors")


@pytest.mark.timeout(120)
def test_tensor_parallel_checkpoint_loads_under_fsdp2_and_single_process(tmp_path):
    run_ranks(_tp_ranks, 2, tmp_path)

    reference = load_file(str(tmp_path / "tp-ref.safetensors"))
    assert_same(load_file(str(tmp_path / "tp-into-fsdp.safetensors")), reference)
    plain = TinyLM(seed=9)
    plain_opt = adamw(plain)
    load_dist_checkpoint(latest_dist_checkpoint(tmp_path / "tp"), [plain], [plain_opt])
    assert_same(snapshot(plain, plain_opt), reference)


# -- 4. pipeline-style parts and coverage errors ------------------------------------------------


def split_into_parts(model: TinyLM) -> list[nn.Module]:
    first, second = copy.deepcopy(model), copy.deepcopy(model)
    del first.layers["2"], first.layers["3"]
    first.norm = first.head = None
    del second.layers["0"], second.layers["1"]
    second.embed = None
    return [first, second]


def test_pipeline_parts_each_get_their_own_parameters(tmp_path):
    whole = TinyLM(seed=0)
    opt = adamw(whole)
    train_step(whole, opt, seed=1)
    path = save_dist_checkpoint(tmp_path, 1, [whole], [opt], {})
    want = snapshot(whole, opt)

    parts = split_into_parts(TinyLM(seed=4))
    opts = [adamw(part) for part in parts]
    load_dist_checkpoint(path, parts, opts)

    owned = [
        {"embed.weight"} | {f"layers.{i}.{n}" for i in "01" for n in Block().state_dict()},
        {f"layers.{i}.{n}" for i in "23" for n in Block().state_dict()}
        | {"norm.weight", "norm.bias", "head.weight", "head.bias"},
    ]
    for part, part_opt, names in zip(parts, opts, owned, strict=True):
        got = snapshot(part, part_opt)
        assert {k[len("model.") :] for k in got if k.startswith("model.")} == names
        assert_same(got, {k: want[k] for k in got})


def test_missing_parameters_are_named(tmp_path):
    # A checkpoint of the first pipeline stage alone serves that stage, not the whole model.
    first, _ = split_into_parts(TinyLM(seed=0))
    first_opt = adamw(first)
    stage = save_dist_checkpoint(tmp_path / "stage", 1, [first], [first_opt], {})
    load_dist_checkpoint(stage, [first], [first_opt])
    with pytest.raises(CheckpointError, match=r"layers\.2\.down\.bias"):
        load_dist_checkpoint(stage, [TinyLM(seed=0)], None)

    no_bias = TinyLM(seed=0, head_bias=False)
    path = save_dist_checkpoint(tmp_path / "nobias", 1, [no_bias], [adamw(no_bias)], {})
    model = TinyLM(seed=0)
    with pytest.raises(CheckpointError, match=r"parameters head\.bias;") as err:
        load_dist_checkpoint(path, [model], [adamw(model)])
    assert "state.head.bias.exp_avg" in str(err.value)

    with pytest.raises(CheckpointError, match="one optimizer per model part"):
        load_dist_checkpoint(path, [model], [])


# -- 5. atomic publish and pruning --------------------------------------------------------------


def test_temp_and_incomplete_folders_are_ignored_and_keep_prunes(tmp_path):
    model = TinyLM(seed=0)
    opt = adamw(model)
    train_step(model, opt, seed=1)
    for step in (1, 2, 3):
        save_dist_checkpoint(tmp_path, step, [model], [opt], {"step": step}, keep=2)
    assert [p.name for p in list_dist_checkpoints(tmp_path)] == ["step-000002", "step-000003"]

    crashed = tmp_path / ".tmp-step-000004"  # a save killed before the rename
    crashed.mkdir()
    (crashed / ".metadata").write_bytes(b"")
    (crashed / "state.json").write_text("{}")
    (tmp_path / "step-000005").mkdir()  # not written by us: no DCP index, no state.json
    assert latest_dist_checkpoint(tmp_path) == tmp_path / "step-000003"
    assert not (tmp_path / ".tmp-step-000003").exists()

    with pytest.raises(CheckpointError, match=r"extra\['bad'\] is a Tensor"):
        save_dist_checkpoint(tmp_path, 6, [model], [opt], {"bad": torch.zeros(1)})


# -- 6. SIGTERM ---------------------------------------------------------------------------------


def test_termination_flag_catches_sigterm_and_restores_the_handler():
    def previous(signum, frame):
        raise AssertionError("the flag's handler should be active")

    old = signal.signal(signal.SIGTERM, previous)
    try:
        with TerminationFlag() as flag:
            assert flag.installed and not flag.requested
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not flag.requested and time.monotonic() < deadline:
                time.sleep(0.01)  # the handler runs in the main thread between bytecodes
            assert flag.requested and flag.signal_name == "SIGTERM"
            assert flag.requested_on_any_rank()  # no process group: just this process
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)


def test_termination_flag_outside_main_thread_installs_nothing():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def worker():
        with pytest.warns(RuntimeWarning, match="main thread"), TerminationFlag() as flag:
            seen.append(flag.installed)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [False]
    assert signal.getsignal(signal.SIGTERM) is before
