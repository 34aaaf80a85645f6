"""Per-rank communication meter: bytes sent through collectives and time spent in them.

`CommMeter.install()` wraps, for as long as it is installed, the Python entry points every
layout of the engine communicates through:

- `torch.distributed` collectives and point-to-point calls (FSDP2's all-gather and
  reduce-scatter, HSDP's all-reduce, pipeline sends and receives, the engine's own
  all-reduces). They are replaced in both `torch.distributed` and
  `torch.distributed.distributed_c10d`, so callers that look the name up at call time
  (`dist.all_gather_single(...)`) and torch's internal aliases (`all_gather_into_tensor`,
  `send`, which call the c10d globals) all reach the wrapper. One object serves both
  namespaces, which keeps torch's identity checks (`op is isend` in `batch_isend_irecv`,
  `op0 is all_reduce` in the coalescing manager) true.
- the functional collectives `torch.ops._c10d_functional.*` that DTensor (tensor
  parallel) and `torch.distributed._functional_collectives` call, plus `wait_tensor`,
  where their asynchronous work is waited for.
- `Work.wait()` called from Python (pipeline isend/irecv, FSDP2 async unshard).

DDP reduces gradients from C++, out of reach of any Python patch: `attach_ddp` registers a
comm hook that does what DDP's default hook does (divide by the group size, all-reduce) and
times each bucket from launch until its future completes.

Byte conventions, per rank and per call (numel x element size):

    op                     bytes (what this rank contributes)   wire (ring estimate)
    all_reduce             the tensor, S                         2(n-1)/n * S
    all_gather             the input shard, s (output n*s)       (n-1)/n * n*s
    reduce_scatter         the full input, S (output S/n)        (n-1)/n * S
    all_to_all             the input, S                          (n-1)/n * S
    broadcast / reduce     the tensor, S                         (n-1)/n * S
    isend                  the tensor, S                         S
    irecv                  0 (the sender counts it)              0

Time: `seconds` is the wall-clock time during which at least one metered call or DDP
bucket was in flight (the union of the intervals, so overlapping buckets count once).
On gloo (CPU) collectives called without async_op block until done, so that is the
communication time. On NCCL they return at launch: `seconds` then measures launch and
explicit waits only, not the transfer, which runs on a CUDA stream. DDP buckets are timed
launch -> completion, which overlaps backward compute: an upper bound on exposed time.

Install between steps, not inside one (a `P2POp` built before install holds the unwrapped
`isend` and fails torch's identity check), and eager mode only (torch.compile traces the
originals). One meter may be installed at a time.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch import nn

# c10d function -> (parameter holding the tensor(s) this rank contributes, traffic kind).
# `send`/`recv`, `all_gather_into_tensor`, `reduce_scatter_tensor`, `_all_gather_base` and
# `_reduce_scatter_base` call these through the c10d globals, so they are counted once.
C10D_OPS: dict[str, tuple[str, str]] = {
    "all_reduce": ("tensor", "all_reduce"),
    "all_reduce_coalesced": ("tensors", "all_reduce"),
    "all_gather": ("tensor", "all_gather"),
    "all_gather_single": ("input_tensor", "all_gather"),
    "reduce_scatter": ("input_list", "reduce_scatter"),
    "reduce_scatter_single": ("input", "reduce_scatter"),
    "all_to_all": ("input_tensor_list", "all_to_all"),
    "all_to_all_single": ("input", "all_to_all"),
    "broadcast": ("tensor", "broadcast"),
    "reduce": ("tensor", "reduce"),
    "isend": ("tensor", "send"),
    "irecv": ("tensor", "recv"),
}

# torch.ops._c10d_functional op -> traffic kind; their first argument holds the tensor(s).
FUNCOL_OPS: dict[str, str] = {
    "all_reduce": "all_reduce",
    "all_reduce_": "all_reduce",
    "all_reduce_coalesced": "all_reduce",
    "all_reduce_coalesced_": "all_reduce",
    "all_gather_into_tensor": "all_gather",
    "all_gather_into_tensor_out": "all_gather",
    "all_gather_into_tensor_coalesced": "all_gather",
    "reduce_scatter_tensor": "reduce_scatter",
    "reduce_scatter_tensor_out": "reduce_scatter",
    "reduce_scatter_tensor_coalesced": "reduce_scatter",
    "all_to_all_single": "all_to_all",
    "broadcast": "broadcast",
    "broadcast_": "broadcast",
}

_WORK = torch._C._distributed_c10d.Work
_ACTIVE: list[CommMeter] = []  # the installed meter, if any


def wire_bytes(kind: str, nbytes: int, n: int) -> float:
    """Bytes one rank puts on the wire for `nbytes` contributed, with ring algorithms."""
    if n <= 1 or kind == "recv":
        return 0.0
    if kind == "all_reduce":
        return 2.0 * (n - 1) / n * nbytes
    if kind == "all_gather":  # nbytes is the shard; the full output is n times that
        return float((n - 1) * nbytes)
    if kind == "send":
        return float(nbytes)
    return (n - 1) / n * nbytes  # reduce_scatter, all_to_all, broadcast, reduce


def tensor_bytes(value: Any) -> int:
    """numel x element size of a tensor or a (nested) list of tensors."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    return 0


def _group_size(group: Any) -> int:
    if group is None or isinstance(group, dist.ProcessGroup):
        return dist.get_world_size(group)
    # functional collectives pass a group name (or, rarely, the group itself)
    return torch._C._distributed_c10d._resolve_process_group(str(group)).size()


@dataclass
class _OpStats:
    calls: int = 0
    bytes: int = 0
    wire_bytes: float = 0.0
    seconds: float = 0.0


@dataclass
class _Counters:
    by_op: dict[str, _OpStats] = field(default_factory=dict)
    intervals: list[tuple[float, float]] = field(default_factory=list)


class _FuncolOp:
    """Stands in for an OpOverloadPacket: counts calls, forwards everything else.

    Attribute access (`.default`, `._schema`) reaches the real packet, so identity checks
    such as `func is torch.ops._c10d_functional.wait_tensor.default` stay true.
    """

    def __init__(self, packet: Any, call: Callable[..., Any]) -> None:
        self._packet = packet
        self._call = call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("_packet", "_call"):  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._packet, name)


class CommMeter:
    """Counts this rank's communication; `take()` returns and resets the step's numbers.

    Per step (the engine's loop):

        meter = CommMeter().install()              # after the model is wrapped
        if isinstance(module, DistributedDataParallel):
            meter.attach_ddp(module)               # before the first backward
        ...
        row = engine.train_step()
        comm = meter.take()                        # bytes, seconds, calls, by_op
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()  # depth of metered calls on this thread
        self._counters = _Counters()
        self._saved: list[tuple[Any, str, Any]] = []  # (owner, attribute, original)

    # -- installing --------------------------------------------------------------------------

    @property
    def installed(self) -> bool:
        return bool(self._saved)

    def install(self) -> CommMeter:
        if self.installed:
            return self
        if _ACTIVE:
            raise RuntimeError("another CommMeter is installed; uninstall it first")
        for name, (param, kind) in C10D_OPS.items():
            original = getattr(c10d, name, None)
            if original is None:  # older torch (e.g. 2.11 has no all_gather_single)
                continue
            wrapper = self._wrap_c10d(name, original, param, kind)
            # the same object in both namespaces: torch compares these functions by identity
            self._replace(c10d, name, wrapper)
            if getattr(dist, name, None) is original:
                self._replace(dist, name, wrapper)
        ns = torch.ops._c10d_functional
        for name, kind in FUNCOL_OPS.items():
            packet = getattr(ns, name, None)
            if packet is not None:
                self._replace(ns, name, _FuncolOp(packet, self._wrap_funcol(name, packet, kind)))
        wait_packet = ns.wait_tensor
        self._replace(ns, "wait_tensor", _FuncolOp(wait_packet, self._wrap_wait(wait_packet)))
        self._replace(_WORK, "wait", self._wrap_work_wait(_WORK.wait))
        _ACTIVE.append(self)
        return self

    def uninstall(self) -> None:
        """Put every original back (in reverse, so a name replaced twice ends original)."""
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def __enter__(self) -> CommMeter:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _replace(self, owner: Any, name: str, new: Any) -> None:
        # on a class, keep the descriptor itself so restoring it rebinds `self` as before
        original = vars(owner)[name] if isinstance(owner, type) else getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, new)

    # -- DDP ---------------------------------------------------------------------------------

    def attach_ddp(self, ddp: nn.Module) -> None:
        """Meter a DistributedDataParallel module's gradient all-reduce, bucket by bucket.

        Replaces DDP's built-in reduction with an equivalent Python hook (mean over the
        group). DDP allows one hook per module, registered before the first backward. The
        hook counts whether or not the meter is installed.
        """
        ddp.register_comm_hook(ddp.process_group, self._ddp_hook)

    # No annotations on `bucket` or the return: DDP compares them with dist.GradBucket and
    # Future[Tensor] by value, and postponed (string) annotations fail that check.
    def _ddp_hook(self, group: Any, bucket):
        tensor = bucket.buffer()
        n = group.size()
        nbytes = tensor_bytes(tensor)
        tensor.div_(n)
        started = time.perf_counter()
        # ProcessGroup.allreduce is C++: the c10d wrapper does not see it, so no double count
        fut = group.allreduce([tensor]).get_future()

        def done(f: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
            # runs on the backend's thread when the all-reduce completes
            self._record("ddp.all_reduce", 1, nbytes, wire_bytes("all_reduce", nbytes, n), started)
            return f.value()[0]

        return fut.then(done)

    # -- reading -----------------------------------------------------------------------------

    def take(self) -> dict[str, Any]:
        """This step's totals and per-op numbers since the last take(); resets them."""
        with self._lock:
            counters, self._counters = self._counters, _Counters()
        by_op = {
            name: {
                "calls": s.calls,
                "bytes": s.bytes,
                "wire_bytes": round(s.wire_bytes),
                "seconds": s.seconds,
            }
            for name, s in sorted(counters.by_op.items())
        }
        return {
            "bytes": sum(s.bytes for s in counters.by_op.values()),
            "wire_bytes": round(sum(s.wire_bytes for s in counters.by_op.values())),
            "seconds": _union_seconds(counters.intervals),
            "calls": sum(s.calls for s in counters.by_op.values()),
            "by_op": by_op,
        }

    # -- wrappers ----------------------------------------------------------------------------

    def _record(self, op: str, calls: int, nbytes: int, wire: float, started: float) -> None:
        ended = time.perf_counter()
        with self._lock:
            stats = self._counters.by_op.setdefault(op, _OpStats())
            stats.calls += calls
            stats.bytes += nbytes
            stats.wire_bytes += wire
            stats.seconds += ended - started
            self._counters.intervals.append((started, ended))

    def _timed(
        self, op: str, fn: Callable[..., Any], args: tuple, kwargs: dict, count: Callable
    ) -> Any:
        """Run fn; outside another metered call, record it with count() -> (calls, bytes, wire)."""
        local = self._local
        if getattr(local, "depth", 0):  # nested (an alias, torch_function dispatch): counted
            return fn(*args, **kwargs)
        calls, nbytes, wire = count(args, kwargs)
        started = time.perf_counter()
        local.depth = 1
        try:
            return fn(*args, **kwargs)
        finally:
            local.depth = 0
            self._record(op, calls, nbytes, wire, started)

    def _wrap_c10d(
        self, name: str, original: Callable[..., Any], param: str, kind: str
    ) -> Callable[..., Any]:
        signature = inspect.signature(original)

        def count(args: tuple, kwargs: dict) -> tuple[int, int, float]:
            bound = signature.bind_partial(*args, **kwargs).arguments
            nbytes = 0 if kind == "recv" else tensor_bytes(bound.get(param))
            return 1, nbytes, wire_bytes(kind, nbytes, _group_size(bound.get("group")))

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self._timed(name, original, args, kwargs, count)

        wrapper.__name__ = wrapper.__qualname__ = original.__name__  # P2POp reads op.__name__
        wrapper.__doc__ = original.__doc__
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        return wrapper

    def _wrap_funcol(self, name: str, packet: Any, kind: str) -> Callable[..., Any]:
        names = [a.name for a in packet.default._schema.arguments]
        op = f"funcol.{name}"

        def count(args: tuple, kwargs: dict) -> tuple[int, int, float]:
            bound = {**dict(zip(names, args, strict=False)), **kwargs}
            nbytes = tensor_bytes(args[0] if args else bound.get("input", bound.get("inputs")))
            n = bound.get("group_size") or _group_size(bound.get("group_name"))
            return 1, nbytes, wire_bytes(kind, nbytes, int(n))

        return lambda *args, **kwargs: self._timed(op, packet, args, kwargs, count)

    def _wrap_wait(self, packet: Any) -> Callable[..., Any]:
        def nothing(args: tuple, kwargs: dict) -> tuple[int, int, float]:
            return 0, 0, 0.0  # time only: the launch counted the call and its bytes

        return lambda *args, **kwargs: self._timed(
            "funcol.wait_tensor", packet, args, kwargs, nothing
        )

    def _wrap_work_wait(self, original: Callable[..., Any]) -> Callable[..., Any]:
        meter = self

        def nothing(args: tuple, kwargs: dict) -> tuple[int, int, float]:
            return 0, 0, 0.0

        def wait(work: Any, *args: Any, **kwargs: Any) -> Any:
            return meter._timed("wait", original, (work, *args), kwargs, nothing)

        wait.__doc__ = original.__doc__
        return wait


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: concurrent buckets count once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def step_fields(comm: dict[str, Any], step_seconds: float) -> dict[str, Any]:
    """The engine's per-step metric fields from one take() and the step's wall time."""
    seconds = min(comm["seconds"], step_seconds)
    return {
        "comm_seconds": seconds,
        "compute_seconds": step_seconds - seconds,
        "comm_share": seconds / step_seconds if step_seconds > 0 else 0.0,
        "comm_bytes": comm["bytes"],
        "comm_wire_bytes": comm["wire_bytes"],
    }
