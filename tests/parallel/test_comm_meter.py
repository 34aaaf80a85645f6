"""CommMeter on 2 gloo ranks: DDP buckets, FSDP2 all-gather/reduce-scatter, funcol, p2p.

One spawn runs every distributed check and writes each rank's take() results; the tests
read them. Restoring the originals is checked in this process (no process group needed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch import nn

from dist_helpers import run_ranks
from lmforge.parallel.comm_meter import C10D_OPS, FUNCOL_OPS, CommMeter

WORLD = 2
pytestmark = pytest.mark.timeout(120)


class _Net(nn.Module):
    """Root-owned input and head around three blocks; every dim-0 divides by 2 (no padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(3))
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def _nbytes(params: Any) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _rank_checks(rank: int, world: int, out: str) -> None:
    import torch.distributed._functional_collectives as funcol
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    res: dict[str, Any] = {}
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    meter = CommMeter().install()

    # DDP: the hook sees every gradient bucket
    ddp = DistributedDataParallel(_Net())
    meter.attach_ddp(ddp)
    res["ddp_param_bytes"] = _nbytes(ddp.parameters())
    meter.take()
    ddp(x).sum().backward()
    res["ddp"] = meter.take()
    grads = [p.grad.clone() for p in ddp.parameters()]
    dist.all_reduce(grads[0])  # gradients are already the mean: equal on both ranks
    res["ddp_grad_synced"] = bool(torch.allclose(grads[0] / world, ddp.module.inp.weight.grad))
    meter.take()

    # FSDP2: per block, then the root (kept gathered after forward), as sharding.py does
    net = _Net()
    res["fsdp_root_bytes"] = _nbytes([*net.inp.parameters(), *net.head.parameters()])
    res["fsdp_layer_bytes"] = _nbytes(net.layers.parameters())
    mesh = init_device_mesh("cpu", (world,))
    for layer in net.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(net, mesh=mesh, reshard_after_forward=False)
    meter.take()
    for step in range(2):
        net(x).sum().backward()
        res[f"fsdp{step}"] = meter.take()

    # functional collectives (what DTensor / tensor parallel uses): launch, then wait
    reduced = funcol.all_reduce(torch.ones(10), "sum", dist.group.WORLD)
    res["funcol_value"] = float(reduced.sum())
    res["funcol"] = meter.take()

    # pipeline-style point-to-point through P2POp / batch_isend_irecv
    send, recv = torch.full((5,), float(rank)), torch.empty(5)
    ops = [
        dist.P2POp(dist.isend, send, (rank + 1) % world),
        dist.P2POp(dist.irecv, recv, (rank - 1) % world),
    ]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    res["p2p_value"] = float(recv[0])
    res["p2p"] = meter.take()
    res["empty"] = meter.take()
    meter.uninstall()
    dist.all_reduce(torch.ones(3))
    res["after_uninstall"] = meter.take()
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("comm-meter")
    run_ranks(_rank_checks, WORLD, str(out), timeout=100)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_ddp_counts_every_gradient_byte(ranks):
    for res in ranks:
        ddp, grad_bytes = res["ddp"], res["ddp_param_bytes"]
        op = ddp["by_op"]["ddp.all_reduce"]
        assert op["bytes"] >= grad_bytes
        assert op["bytes"] == grad_bytes  # one bucket set, fp32, no unused parameters
        assert op["wire_bytes"] == round(2 * (WORLD - 1) / WORLD * grad_bytes)
        assert op["seconds"] > 0 and ddp["seconds"] > 0
        assert res["ddp_grad_synced"]


def test_fsdp2_all_gather_and_reduce_scatter_bytes(ranks):
    for res in ranks:
        root, layers = res["fsdp_root_bytes"], res["fsdp_layer_bytes"]
        for step in (res["fsdp0"], res["fsdp1"]):
            gather = step["by_op"]["all_gather_single"]
            scatter = step["by_op"]["reduce_scatter_single"]
            # forward gathers root + 3 blocks, backward the 3 resharded blocks again; each
            # rank contributes its 1/world shard per gather
            assert gather["calls"] == 1 + 3 + 3
            assert gather["bytes"] == (root + 2 * layers) // WORLD
            assert gather["wire_bytes"] == round((WORLD - 1) * gather["bytes"])
            # one reduce-scatter per unit, of the full (unsharded) fp32 gradient
            assert scatter["calls"] == 1 + 3
            assert scatter["bytes"] == root + layers
            assert step["bytes"] == gather["bytes"] + scatter["bytes"]
            assert step["seconds"] > 0


def test_functional_collectives_and_p2p_are_seen(ranks):
    for rank, res in enumerate(ranks):
        assert res["funcol_value"] == 10 * WORLD
        op = res["funcol"]["by_op"]["funcol.all_reduce"]
        assert (op["calls"], op["bytes"]) == (1, 40)
        assert res["p2p_value"] == float((rank - 1) % WORLD)
        p2p = res["p2p"]["by_op"]
        assert (p2p["isend"]["calls"], p2p["isend"]["bytes"], p2p["isend"]["wire_bytes"]) == (
            1,
            20,
            20,
        )
        assert (p2p["irecv"]["calls"], p2p["irecv"]["bytes"]) == (1, 0)
        assert res["p2p"]["bytes"] == 20


def test_take_resets_and_uninstall_stops_counting(ranks):
    for res in ranks:
        for key in ("empty", "after_uninstall"):
            assert res[key] == {
                "bytes": 0,
                "wire_bytes": 0,
                "seconds": 0.0,
                "calls": 0,
                "by_op": {},
            }


def test_uninstall_restores_the_originals():
    ns = torch.ops._c10d_functional
    before = {
        **{f"c10d.{n}": getattr(c10d, n) for n in C10D_OPS},
        **{f"dist.{n}": getattr(dist, n) for n in C10D_OPS if hasattr(dist, n)},
        **{f"ops.{n}": getattr(ns, n) for n in [*FUNCOL_OPS, "wait_tensor"]},
        "Work.wait": vars(torch._C._distributed_c10d.Work)["wait"],
    }

    def now() -> dict[str, Any]:
        return {
            **{f"c10d.{n}": getattr(c10d, n) for n in C10D_OPS},
            **{f"dist.{n}": getattr(dist, n) for n in C10D_OPS if hasattr(dist, n)},
            **{f"ops.{n}": getattr(ns, n) for n in [*FUNCOL_OPS, "wait_tensor"]},
            "Work.wait": vars(torch._C._distributed_c10d.Work)["wait"],
        }

    with CommMeter() as meter:
        patched = now()
        assert all(patched[k] is not before[k] for k in before)
        assert dist.all_gather_single is c10d.all_gather_single  # one object, both namespaces
        assert dist.isend.__name__ == "isend"
        assert ns.wait_tensor.default is before["ops.wait_tensor"].default
        with pytest.raises(RuntimeError, match="another CommMeter"):
            CommMeter().install()
        assert meter.installed
    assert not meter.installed
    assert all(now()[k] is before[k] for k in before)
