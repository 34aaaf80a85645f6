"""The parallel layout of a run: four degrees whose product is the world size, and its mesh.

    world = pp x dp_replicate x dp_shard x tp

`dp_replicate` copies the model (DDP-style gradient all-reduce), `dp_shard` shards parameters,
gradients and optimizer state (FSDP2), `tp` splits each layer's matrices (DTensor), `pp`
splits the layer stack into pipeline stages. Data parallelism is `dp_replicate x dp_shard`:
each data-parallel rank takes its share of the global batch. One `DeviceMesh` with the dims
in that order (pp outermost, tp innermost so tensor-parallel peers are neighbouring ranks,
which on GPUs means the same node) serves every sub-group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmforge.errors import ConfigError

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1

    @classmethod
    def resolve(
        cls, world_size: int, dp_replicate: int = 1, dp_shard: int = -1, tp: int = 1, pp: int = 1
    ) -> ParallelDims:
        """Check the degrees against the world size; `dp_shard=-1` takes whatever is left."""
        named = {"dp_replicate": dp_replicate, "tp": tp, "pp": pp}
        for name, value in named.items():
            if value < 1:
                raise ConfigError(f"parallel.{name}={value}: use a degree of at least 1")
        fixed = dp_replicate * tp * pp
        if dp_shard == -1:
            if world_size % fixed:
                raise ConfigError(
                    f"world size {world_size} is not divisible by dp_replicate x tp x pp = "
                    f"{dp_replicate} x {tp} x {pp} = {fixed}; change the degrees or --nproc"
                )
            dp_shard = world_size // fixed
        elif dp_shard < 1:
            raise ConfigError(
                f"parallel.dp_shard={dp_shard}: use a degree >= 1, or -1 for the rest"
            )
        dims = cls(dp_replicate=dp_replicate, dp_shard=dp_shard, tp=tp, pp=pp)
        if dims.world_size != world_size:
            raise ConfigError(
                f"parallel degrees dp_replicate={dp_replicate} x dp_shard={dp_shard} x tp={tp} "
                f"x pp={pp} = {dims.world_size}, but {world_size} processes were started; "
                f"their product must equal the world size (set --nproc {dims.world_size} or "
                "change the degrees; dp_shard: -1 fills in the rest)"
            )
        return dims

    @property
    def world_size(self) -> int:
        return self.dp_replicate * self.dp_shard * self.tp * self.pp

    @property
    def dp(self) -> int:
        """Data-parallel degree: how many ways the global batch is split."""
        return self.dp_replicate * self.dp_shard

    @property
    def data_parallel_mode(self) -> str:
        """none | ddp | fsdp | hsdp: how gradients are reduced across data-parallel ranks."""
        if self.dp_shard > 1:
            return "hsdp" if self.dp_replicate > 1 else "fsdp"
        if self.dp_replicate > 1:
            # DDP cannot wrap DTensor (tensor-parallel) parameters; FSDP2 over a replicate-only
            # mesh reduces them the same way (shard size 1 = plain replication).
            return "ddp" if self.tp == 1 else "hsdp"
        return "none"

    def describe(self) -> str:
        parts = [f"{n}={getattr(self, n)}" for n in MESH_DIMS if getattr(self, n) > 1]
        return " x ".join(parts) if parts else "single process"

    def build_mesh(self, device_type: str) -> tuple[Any, Any]:
        """(the world's DeviceMesh, its flattened data-parallel mesh dp_replicate x dp_shard).

        The flattened mesh is kept here rather than sliced from the root again later:
        slicing flattened dims off a root mesh is going away in torch.
        """
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(
            device_type, tuple(getattr(self, n) for n in MESH_DIMS), mesh_dim_names=MESH_DIMS
        )
        return mesh, mesh["dp_replicate", "dp_shard"]._flatten("dp")
