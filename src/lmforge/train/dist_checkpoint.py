"""Distributed training checkpoints on torch.distributed.checkpoint (DCP), reshardable.

    checkpoints/step-NNNNNN/
        .metadata, __*.distcp    DCP: model and optimizer tensors, each rank writing its shards
        state.json               rank 0: {"format", "step", "world_size", "saved_at", "extra"}
        rng-rank{r}.safetensors  rank r: its torch/CUDA/numpy/Python generator state

Tensors are keyed by the fully qualified parameter names of the *whole* model
("model.layers.3.up.weight", "optim.state.layers.3.up.weight.exp_avg",
"optim.param_groups.layers.3.up.weight.lr"), never by a rank's slice of it. That is what lets a
checkpoint saved under FSDP2, tensor parallel or one pipeline split load under any other layout
or in a single process: each rank asks DCP for the keys its model parts own, in the shapes and
shardings those parts have now, and DCP reads the overlapping pieces.

Numeric optimizer values that are not tensors (lr, betas, eps, weight_decay, initial_lr) are
stored as small float64/int64 tensors, so the DCP payload holds nothing but tensors. Flags
(foreach, fused, ...), None and strings are not saved: the rebuilt optimizer keeps its own.
DCP's own `.metadata` index is a pickle written by torch; no other file is.

Saving is atomic: every rank writes into `.tmp-step-NNNNNN`, all ranks agree that their writes
succeeded, then rank 0 renames the folder to `step-NNNNNN` and prunes to the newest `keep`.
Without an initialised process group everything runs in the one process the same way.
The checkpoint folder must be on a file system every rank sees (one node, or a shared mount).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.optim import Optimizer

from lmforge.train.checkpoint import CheckpointError, capture_rng_state, restore_rng_state
from lmforge.workspace import atomic_write_json, read_json

FORMAT_VERSION = 1
DCP_METADATA = ".metadata"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_TMP_DIR = re.compile(r"^\.tmp-step-(\d{6,})$")
_MODEL = "model."
_OPTIM = "optim."
# Optimizer state is flattened per parameter name ("state.<fqn>.exp_avg",
# "param_groups.<fqn>.lr") so that parts holding different parameters never collide.
_OPTIM_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)

log = logging.getLogger("lmforge.train")

RngState = tuple[dict[str, torch.Tensor], dict[str, Any]]


# -- process group helpers ----------------------------------------------------------------------


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _world_size() -> int:
    return dist.get_world_size() if _distributed() else 1


def _collective_device() -> torch.device:
    """Where a tensor must live for the default group's collectives (NCCL needs the GPU)."""
    backend = str(dist.get_backend())
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is None:
        return torch.device("cpu")
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


def _any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on at least one (a barrier as well)."""
    if not _distributed():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


@contextmanager
def _agreed(what: str) -> Iterator[None]:
    """Run a rank-local block; fail on every rank if it failed on any.

    A rank that raised while the others went on to a collective would leave them waiting until
    the process-group timeout, so the outcome is shared before anyone moves on.
    """
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:
        error = exc
    if _any_rank(error is not None):
        if error is None:
            raise CheckpointError(f"{what} failed on another rank; see that rank's log")
        if isinstance(error, CheckpointError):
            raise error
        raise CheckpointError(f"{what} failed on rank {_rank()}: {error}") from error


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    # DCP warns on every call without a process group; single-process use is intended here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.distributed is disabled.*")
        yield


# -- folders ------------------------------------------------------------------------------------


def is_complete(path: str | Path) -> bool:
    """Both DCP's index and state.json are present (an older layout or a stray folder is not)."""
    path = Path(path)
    return (path / DCP_METADATA).is_file() and (path / STATE_FILE).is_file()


def list_dist_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first; temp folders and incomplete folders are skipped."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_dist_checkpoint(ckpt_root: str | Path) -> Path | None:
    found = list_dist_checkpoints(ckpt_root)
    return found[-1] if found else None


def read_dist_state(path: str | Path) -> dict[str, Any]:
    """The checkpoint's state.json: format, step, world_size, saved_at and the engine's `extra`."""
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(
            f"{path} is not a complete distributed checkpoint (it needs {DCP_METADATA} and "
            f"{STATE_FILE}); delete the folder or point at another step"
        )
    state = read_json(path / STATE_FILE)
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path / STATE_FILE} has format {state.get('format')!r}, this version reads "
            f"{FORMAT_VERSION}; resume with the lmforge version that wrote it"
        )
    return state


def _prune(root: Path, keep: int, current_step: int) -> None:
    if keep > 0:
        for stale in list_dist_checkpoints(root)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    # Saves run one after another, so an older temp folder is what a crashed save left behind.
    for entry in root.iterdir():
        match = _TMP_DIR.match(entry.name)
        if match and int(match.group(1)) < current_step:
            shutil.rmtree(entry, ignore_errors=True)


# -- non-tensor optimizer values <-> tensors ----------------------------------------------------


def _as_tensor(value: Any) -> torch.Tensor | None:
    """A tensor DCP can store for `value`, or None when the value is left out of the checkpoint.

    Booleans (foreach, fused, amsgrad, ...) are how the optimizer was built, not training state:
    the rebuilt optimizer's flags win, and skipping them saves one DCP entry per parameter each.
    """
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return torch.tensor(value, dtype=torch.int64)
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64)  # float64 keeps a Python float exact
    if isinstance(value, tuple | list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return torch.tensor(value, dtype=torch.int64)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return torch.tensor(value, dtype=torch.float64)
    return None


def _from_tensor(loaded: torch.Tensor, template: Any) -> Any:
    """Undo `_as_tensor`, giving back the kind of value the live optimizer holds."""
    if isinstance(template, torch.Tensor):
        return loaded
    values = loaded.tolist()  # the dtype decides: int or float
    if isinstance(template, tuple | list):
        return type(template)(values if isinstance(values, list) else [values])
    return values


# -- save ---------------------------------------------------------------------------------------


def _check_parts(model_parts: Sequence[nn.Module], optimizers: Sequence[Optimizer] | None) -> None:
    if not model_parts:
        raise CheckpointError("no model parts given: pass the list of modules this rank holds")
    if optimizers is not None and len(optimizers) != len(model_parts):
        raise CheckpointError(
            f"{len(model_parts)} model parts but {len(optimizers)} optimizers: pass one "
            "optimizer per model part, in the same order"
        )


def _check_json(obj: Any, where: str = "extra") -> None:
    """Name the first value JSON cannot hold, so the caller knows which entry to convert."""
    if obj is None or isinstance(obj, str | int | float | bool):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CheckpointError(
                    f"{where} has the key {key!r} ({type(key).__name__}); JSON keys must be "
                    "strings: convert it with str()"
                )
            _check_json(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _check_json(value, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"{where} is a {type(obj).__name__}, which JSON cannot hold: store numbers, strings, "
        "lists and dicts (tensors via .tolist(), numpy scalars via .item())"
    )


def _gather_state_dict(
    model_parts: Sequence[nn.Module], optimizers: Sequence[Optimizer] | None
) -> dict[str, Any]:
    """One flat dict over all local parts: `model.<fqn>` and `optim.<flattened key>`.

    Tensors stay as the parts hold them (DTensor shards under FSDP2/TP), so nothing is gathered.
    """
    merged: dict[str, Any] = {}
    for i, part in enumerate(model_parts):
        entries = {_MODEL + k: v for k, v in get_model_state_dict(part).items()}
        if optimizers is not None:
            flat = get_optimizer_state_dict(part, optimizers[i], options=_OPTIM_OPTIONS)
            for key, value in flat.items():
                tensor = _as_tensor(value)
                if tensor is not None:
                    entries[_OPTIM + key] = tensor
        clash = merged.keys() & entries.keys()
        if clash:
            raise CheckpointError(
                f"model parts share parameters {sorted(clash)[:5]}: each parameter must belong "
                "to exactly one part on a rank"
            )
        merged.update(entries)
    return merged


def save_dist_checkpoint(
    ckpt_root: str | Path,
    step: int,
    model_parts: Sequence[nn.Module],
    optimizers: Sequence[Optimizer],
    extra: dict[str, Any],
    keep: int = 2,
    rng: RngState | None = None,
) -> Path:
    """Write `ckpt_root/step-NNNNNN` atomically and prune to the newest `keep`. Collective.

    Every rank calls it with the model parts it holds and one optimizer per part (an optimizer
    that has not stepped yet gets its state created by a zero-lr step, as DCP does). `extra` is
    the engine's JSON-able state (step, data position, scheduler state dicts, loss scaler,
    run identity; tuples come back as lists, NaN and infinities as null); rank 0's copy is
    written. `keep` <= 0 keeps every checkpoint. `rng` defaults to this rank's generators now;
    pass the state captured at the start of an interrupted step to replay it with the same
    randomness.
    """
    _check_parts(model_parts, optimizers)
    _check_json(extra)  # on every rank, so a bad value fails everywhere before any collective
    root = Path(ckpt_root)
    target = root / f"step-{step:06d}"
    tmp = root / f".tmp-{target.name}"
    rank = _rank()

    with _agreed("preparing the checkpoint folder"):
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crash at this very step
            tmp.mkdir()
    try:
        _write_and_publish(tmp, target, step, model_parts, optimizers, extra, keep, rng)
    except BaseException:
        # Every failure below is raised on all ranks at the same point, after all writes.
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write_and_publish(
    tmp: Path,
    target: Path,
    step: int,
    model_parts: Sequence[nn.Module],
    optimizers: Sequence[Optimizer],
    extra: dict[str, Any],
    keep: int,
    rng: RngState | None,
) -> None:
    rank, world = _rank(), _world_size()
    with _agreed("collecting the state dicts"):
        state_dict = _gather_state_dict(model_parts, optimizers)
    with _quiet_single_process():
        # DCP gathers every rank's outcome and raises on all of them if any write failed.
        dcp.save(state_dict, checkpoint_id=tmp, no_dist=not _distributed())

    with _agreed("writing RNG and state files"):
        rng_tensors, rng_info = rng if rng is not None else capture_rng_state()
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in rng_tensors.items()},
            str(tmp / f"rng-rank{rank}.safetensors"),
            metadata={"rng": json.dumps(rng_info), "rank": str(rank), "world_size": str(world)},
        )
        if rank == 0:
            atomic_write_json(
                tmp / STATE_FILE,
                {
                    "format": FORMAT_VERSION,
                    "step": step,
                    "world_size": world,
                    "saved_at": time.time(),
                    "extra": extra,
                },
            )

    with _agreed("publishing the checkpoint"):
        if rank == 0:
            old = target.parent / f".old-{target.name}"
            if target.exists():  # saving the same step again (e.g. right after a resume)
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
            _prune(target.parent, keep, step)


# -- load ---------------------------------------------------------------------------------------


def load_dist_checkpoint(
    path: str | Path,
    model_parts: Sequence[nn.Module],
    optimizers: Sequence[Optimizer] | None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint into this rank's model parts and optimizers; return `extra`. Collective.

    Only the keys the local parts own are read, in the layout the parts have now (any mix of
    FSDP2, tensor parallel, pipeline split or none), so a pipeline stage never holds another
    stage's weights. Every parameter and buffer of every part, and the optimizer state of every
    parameter, must be in the checkpoint: otherwise CheckpointError names what is missing.
    Pass `optimizers=None` to load weights only (evaluation, export).

    RNG state is restored when the checkpoint was saved with the same number of ranks; with a
    different world size the per-rank generators have no counterpart and are left alone.
    """
    path = Path(path)
    _check_parts(model_parts, optimizers)
    with _agreed("reading the checkpoint"):  # a folder one rank cannot see must not hang the rest
        state = read_dist_state(path)
        try:
            saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        except Exception as exc:
            raise CheckpointError(
                f"cannot read {path / DCP_METADATA}: {exc}; delete the folder"
            ) from exc

    # Templates: what each part holds now. DCP fills their tensors in place.
    model_sds = [get_model_state_dict(part) for part in model_parts]
    optim_sds = (
        [
            get_optimizer_state_dict(part, opt, options=_OPTIM_OPTIONS)
            for part, opt in zip(model_parts, optimizers, strict=True)
        ]
        if optimizers is not None
        else []
    )
    to_load: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    mismatched: list[str] = []

    def want(key: str, tensor: torch.Tensor, required: bool) -> None:
        meta = saved.get(key)
        if not isinstance(meta, TensorStorageMetadata):
            if required:
                missing.append(key)
            return
        if tuple(meta.size) != tuple(tensor.shape):
            mismatched.append(f"{key} {tuple(meta.size)} vs {tuple(tensor.shape)}")
            return
        to_load[key] = tensor

    for sd in model_sds:
        for fqn, tensor in sd.items():
            want(_MODEL + fqn, tensor, required=True)
    for sd in optim_sds:
        for key, value in sd.items():
            tensor = _as_tensor(value)
            if tensor is not None:
                # Hyperparameters absent from the checkpoint keep the new optimizer's values.
                want(_OPTIM + key, tensor, required=key.startswith("state."))

    with _agreed("checking the checkpoint against the model"):
        if missing:
            params = sorted(k[len(_MODEL) :] for k in missing if k.startswith(_MODEL))
            states = sorted(k[len(_OPTIM) :] for k in missing if k.startswith(_OPTIM))
            what = "; ".join(
                f"{label} {_names(keys)}"
                for label, keys in (("parameters", params), ("optimizer entries", states))
                if keys
            )
            raise CheckpointError(
                f"checkpoint {path} lacks what this rank's model parts need: {what}. It was "
                "saved from a different model or optimizer (or from only some pipeline "
                "stages); resume from a checkpoint of this model or start fresh"
            )
        if mismatched:
            raise CheckpointError(
                f"checkpoint {path} has other shapes than the model (saved vs now): "
                f"{'; '.join(mismatched[:5])}; the model config changed since it was saved"
            )

    with _quiet_single_process():
        dcp.load(to_load, checkpoint_id=path, no_dist=not _distributed())

    strict = StateDictOptions(strict=True)
    for part, sd in zip(model_parts, model_sds, strict=True):
        set_model_state_dict(part, {k: to_load[_MODEL + k] for k in sd}, options=strict)
    if optimizers is not None:
        for part, opt, sd in zip(model_parts, optimizers, optim_sds, strict=True):
            restored = {
                key: _from_tensor(to_load[_OPTIM + key], value)
                if _OPTIM + key in to_load
                else value
                for key, value in sd.items()
            }
            set_optimizer_state_dict(part, opt, restored, options=_OPTIM_OPTIONS)

    if restore_rng:
        _restore_rank_rng(path, state)
    return state["extra"]


def _names(keys: list[str], shown: int = 8) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _restore_rank_rng(path: Path, state: dict[str, Any]) -> None:
    rank, world = _rank(), _world_size()
    file = path / f"rng-rank{rank}.safetensors"
    if int(state.get("world_size", -1)) != world or not file.is_file():
        log.info(
            "not restoring RNG state: %s was saved on %s ranks, this run has %d",
            path.name,
            state.get("world_size"),
            world,
        )
        return
    with safe_open(str(file), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is no dict)
        info = json.loads(fh.metadata()["rng"])
    restore_rng_state(tensors, info)


# -- SIGTERM ------------------------------------------------------------------------------------


class TerminationFlag:
    """Turn SIGTERM into a flag the training loop polls, so a preempted job can checkpoint.

        with TerminationFlag() as stop:
            for step in ...:
                train_step()
                if stop.requested_on_any_rank():   # or stop.requested in one process
                    save_dist_checkpoint(...)
                    print(f"stopped by {stop.signal_name} after step {step}: checkpoint saved")
                    break

    Python only delivers signals to the main thread, and only the main thread may install a
    handler. Entered from another thread, the flag installs nothing, `installed` stays False and
    the signal keeps its old behaviour (a warning says so). The previous handlers come back on
    exit, also when the block raises.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM,)) -> None:
        self.signals = tuple(signals)
        self.requested = False
        self.signum: int | None = None
        self.installed = False
        self._previous: dict[int, Any] = {}

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Keep the handler trivial: it runs between two bytecodes of whatever the loop is doing.
        self.requested = True
        self.signum = signum

    def __enter__(self) -> TerminationFlag:
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                "TerminationFlag entered outside the main thread: Python only handles signals "
                "in the main thread, so SIGTERM keeps its default action (the process ends "
                "without a checkpoint). Run the training loop in the main thread.",
                RuntimeWarning,
                stacklevel=2,
            )
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self.installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, previous in self._previous.items():
            # None: the old handler was installed from C; the default is the closest we can do.
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self.installed = False

    def requested_on_any_rank(self) -> bool:
        """`requested` OR-ed over all ranks. Collective: call it on every rank at the same step.

        The scheduler may signal only some ranks, or signal them between two steps; ranks that
        disagree would enter the checkpoint collective apart and wait forever.
        """
        return _any_rank(self.requested)
