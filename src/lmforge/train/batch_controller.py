"""Run-time choice of the micro-batch size under a memory cap, at a constant effective batch.

Each optimizer step processes the rank's whole per-rank batch as `accum` micro-batches of
`micro` examples. The controller only ever picks divisors of the per-rank batch, so
micro x accum == per-rank batch at every moment and the effective (global) batch, and with
it the training dynamics, never change; only speed and memory do.

Policy, per finished step (`after_step`):

- shrink to the next smaller divisor when peak memory > high_water x cap;
- grow to the next larger divisor after `patience` consecutive steps with peak memory
  < (1 - headroom) x cap, unless growth is frozen or the larger size is known not to fit;
- `patience` steps after each growth, compare tokens/s with the size it grew from: if it
  fell by more than `throughput_tolerance`, step back to the best measured size and freeze
  growth for the rest of the run.

On an out-of-memory error the engine calls `on_oom()`, which halves the micro-batch (to the
largest divisor <= micro / 2) and marks the failed size as too big; the engine then zeroes
the gradients and retries the same step, which is not counted. At micro-batch 1 `on_oom`
raises `MicroBatchOutOfMemoryError`.

The engine drives it like this:

    for batch in per_rank_batches:
        while True:
            try:
                run_step(split_microbatches(batch, ctrl.micro))   # zeroes grads first
                break
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                ctrl.on_oom()
        ctrl.after_step(peak_bytes, step_seconds, tokens)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lmforge.errors import ConfigError, InputDataError, LmforgeError

Decision = dict[str, Any]


class MicroBatchOutOfMemoryError(LmforgeError):
    """Even a micro-batch of one example does not fit in the memory cap."""


class SimulatedOutOfMemoryError(RuntimeError):
    """Raised by `check_fake_oom` when a step's peak memory passes the configured fake limit,
    so the OOM path can be exercised on machines with plenty of memory (CPU, tests)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation failure worth retrying with a smaller micro-batch."""
    if isinstance(exc, (torch.OutOfMemoryError, SimulatedOutOfMemoryError)):
        return True
    # The CPU allocator raises a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def divisors(n: int) -> list[int]:
    """The divisors of n in increasing order."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def split_microbatches(batch: dict[str, Any], micro: int) -> list[dict[str, Any]]:
    """Split a batch dict along dim 0 into chunks of `micro` rows (the last may be smaller).

    Tensors are sliced (views, no copy); other values are passed to every chunk unchanged.
    Normalise the loss by the whole batch's count (examples or tokens), not per chunk, and
    the accumulated gradient equals the full-batch gradient for any split.
    """
    if not isinstance(micro, int) or micro < 1:
        raise ConfigError(f"micro={micro!r}: a micro-batch holds at least 1 row")
    sizes = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim}
    if len(sizes) != 1:
        raise InputDataError(
            f"cannot split a batch whose tensors disagree on rows ({sorted(sizes)}) or that "
            "has no tensor with a batch dimension"
        )
    rows = sizes.pop()
    return [
        {
            k: v[start : start + micro] if isinstance(v, torch.Tensor) and v.ndim else v
            for k, v in batch.items()
        }
        for start in range(0, rows, micro)
    ]


@dataclass
class ControllerSettings:
    per_rank_batch: int
    memory_cap_bytes: int
    initial_micro: int | None = None  # a divisor of per_rank_batch; None: estimate, else 1
    # Estimate for the start size: peak ~ base_bytes + micro x bytes_per_example.
    bytes_per_example: float | None = None
    base_bytes: float = 0.0
    headroom: float = 0.25  # grow only while peak < (1 - headroom) x cap
    high_water: float = 0.9  # shrink when peak > high_water x cap
    patience: int = 3  # steps of evidence before growing or judging a growth
    throughput_tolerance: float = 0.05  # a growth losing more tokens/s than this is undone
    fake_oom_bytes: int | None = None  # check_fake_oom raises above this peak

    def __post_init__(self) -> None:
        if self.per_rank_batch < 1:
            raise ConfigError(f"per_rank_batch={self.per_rank_batch}: use at least 1")
        if self.memory_cap_bytes <= 0:
            raise ConfigError(
                f"memory_cap_bytes={self.memory_cap_bytes}: give the memory budget in bytes "
                "(e.g. 0.9 x the accelerator's memory)"
            )
        if self.initial_micro is not None and self.per_rank_batch % self.initial_micro:
            raise ConfigError(
                f"initial_micro={self.initial_micro} does not divide the per-rank batch "
                f"{self.per_rank_batch}; use one of {divisors(self.per_rank_batch)}"
            )
        if not 0.0 <= self.headroom < 1.0:
            raise ConfigError(f"headroom={self.headroom}: use a fraction in [0, 1)")
        if not 0.0 < self.high_water <= 1.0:
            raise ConfigError(f"high_water={self.high_water}: use a fraction in (0, 1]")
        if 1.0 - self.headroom >= self.high_water:
            raise ConfigError(
                f"headroom={self.headroom} and high_water={self.high_water} overlap: a size "
                "could grow and shrink on the same reading; make 1 - headroom < high_water"
            )
        if self.patience < 1:
            raise ConfigError(f"patience={self.patience}: use at least 1 step")
        if not 0.0 <= self.throughput_tolerance < 1.0:
            raise ConfigError(
                f"throughput_tolerance={self.throughput_tolerance}: use a fraction in [0, 1)"
            )


class MicroBatchController:
    """Picks the micro-batch size at run time; see the module docstring for the policy."""

    def __init__(
        self,
        settings: ControllerSettings,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_decision = on_decision
        self.sizes = divisors(settings.per_rank_batch)
        self.step = 0  # finished (counted) steps
        self.ceiling: int | None = None  # smallest size known not to fit
        self.frozen = False  # growth stopped after it cost throughput
        self.calm_steps = 0  # consecutive steps below the grow threshold
        self.grown_from: int | None = None  # size before the last growth, until judged
        self.rates: dict[int, float] = {}  # micro -> tokens/s of its latest measurement
        self._recent: list[float] = []  # tokens/s of the steps at the current size
        self.decisions: list[Decision] = []
        self.micro = self._initial_micro()
        self._record(None, self.micro, "initial", None, None)

    # -- public ------------------------------------------------------------------------------

    @property
    def accum(self) -> int:
        return self.settings.per_rank_batch // self.micro

    def after_step(self, peak_bytes: float, step_seconds: float, tokens: int) -> int:
        """Record a finished step; returns the micro-batch size for the next step."""
        s = self.settings
        self.step += 1
        rate = tokens / step_seconds if step_seconds > 0 else 0.0
        self._recent.append(rate)
        self._recent = self._recent[-s.patience :]
        if len(self._recent) >= s.patience:
            self.rates[self.micro] = sum(self._recent) / len(self._recent)

        if peak_bytes > s.high_water * s.memory_cap_bytes:
            smaller = self._smaller(self.micro)
            self.ceiling = self.micro  # it hit the high-water mark: don't come back to it
            self.grown_from = None  # a growth that ends here failed on memory, not speed
            if smaller is not None:
                self._change(smaller, "high_water", peak_bytes, rate)
            return self.micro

        if self.grown_from is not None and self.micro in self.rates:
            before, after = self.rates.get(self.grown_from), self.rates[self.micro]
            self.grown_from = None
            if before is not None and after < before * (1.0 - s.throughput_tolerance):
                self.frozen = True
                best = max((m for m in self.rates if m < self.micro), key=lambda m: self.rates[m])
                self._change(best, "throughput_fell", peak_bytes, after)
                return self.micro

        if peak_bytes < (1.0 - s.headroom) * s.memory_cap_bytes:
            self.calm_steps += 1
        else:
            self.calm_steps = 0
        larger = self._larger(self.micro)
        if (
            self.calm_steps >= s.patience
            and not self.frozen
            and self.grown_from is None
            and larger is not None
            and (self.ceiling is None or larger < self.ceiling)
        ):
            self.grown_from = self.micro
            self._change(larger, "grow", peak_bytes, self.rates.get(self.micro, rate))
        return self.micro

    def on_oom(self, peak_bytes: float | None = None) -> int:
        """The current step ran out of memory: halve the micro-batch for its retry. The step
        counter does not move; the engine zeroes the gradients and reruns the same step."""
        smaller = [m for m in self.sizes if m <= self.micro // 2]
        if not smaller:
            cap = self.settings.memory_cap_bytes
            raise MicroBatchOutOfMemoryError(
                f"out of memory at micro-batch {self.micro} (per-rank batch "
                f"{self.settings.per_rank_batch}, memory cap {cap} bytes = {cap / 2**30:.2f} "
                "GiB); one example does not fit: raise the memory cap, shorten max_len, "
                "shrink the model, or shard it over more devices"
            )
        self.ceiling = self.micro
        self.grown_from = None  # the size it grew to failed outright; nothing to judge
        self._change(smaller[-1], "oom", peak_bytes, None)
        return self.micro

    def check_fake_oom(self, peak_bytes: float) -> None:
        """Raise SimulatedOutOfMemoryError when peak_bytes passes `fake_oom_bytes`."""
        limit = self.settings.fake_oom_bytes
        if limit is not None and peak_bytes > limit:
            raise SimulatedOutOfMemoryError(
                f"simulated out of memory: peak {int(peak_bytes)} bytes > fake limit {limit}"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "micro": self.micro,
            "step": self.step,
            "ceiling": self.ceiling,
            "frozen": self.frozen,
            "calm_steps": self.calm_steps,
            "grown_from": self.grown_from,
            "rates": {str(k): v for k, v in self.rates.items()},  # str keys: JSON-safe
            "recent": list(self._recent),
            "decisions": [dict(d) for d in self.decisions],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["settings"]["per_rank_batch"]
        if saved != self.settings.per_rank_batch:
            raise ConfigError(
                f"the saved controller state is for per-rank batch {saved}, this run has "
                f"{self.settings.per_rank_batch}; keep the batch size and world size of the "
                "run you resume, or start the controller fresh"
            )
        self.micro = int(state["micro"])
        self.step = int(state["step"])
        self.ceiling = None if state["ceiling"] is None else int(state["ceiling"])
        self.frozen = bool(state["frozen"])
        self.calm_steps = int(state["calm_steps"])
        self.grown_from = None if state["grown_from"] is None else int(state["grown_from"])
        self.rates = {int(k): float(v) for k, v in state["rates"].items()}
        self._recent = [float(r) for r in state["recent"]]
        self.decisions = [dict(d) for d in state["decisions"]]
        self._check()

    # -- internals ---------------------------------------------------------------------------

    def _initial_micro(self) -> int:
        s = self.settings
        if s.initial_micro is not None:
            return s.initial_micro
        if s.bytes_per_example is None:
            return 1  # no estimate: start safe and let the policy grow it
        budget = (1.0 - s.headroom) * s.memory_cap_bytes - s.base_bytes
        fitting = [m for m in self.sizes if m * s.bytes_per_example <= budget]
        return fitting[-1] if fitting else 1

    def _smaller(self, micro: int) -> int | None:
        below = [m for m in self.sizes if m < micro]
        return below[-1] if below else None

    def _larger(self, micro: int) -> int | None:
        above = [m for m in self.sizes if m > micro]
        return above[0] if above else None

    def _change(self, new: int, reason: str, peak: float | None, rate: float | None) -> None:
        old, self.micro = self.micro, new
        self.calm_steps = 0
        self._recent = []
        self._check()
        self._record(old, new, reason, peak, rate)

    def _check(self) -> None:
        per_rank = self.settings.per_rank_batch
        # The invariant that keeps the effective batch constant.
        assert self.micro * self.accum == per_rank, (self.micro, self.accum, per_rank)

    def _record(
        self, old: int | None, new: int, reason: str, peak: float | None, rate: float | None
    ) -> None:
        decision = {
            "step": self.step,
            "old": old,
            "new": new,
            "reason": reason,
            "peak_bytes": None if peak is None else int(peak),
            "tokens_per_second": rate,
        }
        self.decisions.append(decision)
        if self.on_decision is not None:
            self.on_decision(decision)
