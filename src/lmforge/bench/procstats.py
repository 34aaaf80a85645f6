"""Resident memory of a process (and its descendants) from /proc, sampled in a thread.

Linux only, no psutil: /proc/PID/statm gives the resident pages, /proc/*/stat the parent of
every process. With children included the sum counts pages shared between them (e.g. a
forked worker's copy-on-write pages) once per process, as `ps` and `top` do; that is an upper
bound of the real footprint, and the trend over a soak run is what matters.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType

from lmforge.errors import LmforgeError

PROC = Path("/proc")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
DEFAULT_MAX_SAMPLES = 1_000_000  # a week at 1 s: bounds the list, never reached in practice


class ProcessGoneError(LmforgeError):
    """The process to measure does not exist (any more), or /proc is not available."""


def _own_rss(pid: int) -> int | None:
    try:
        fields = (PROC / str(pid) / "statm").read_text().split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(fields[1]) * PAGE_BYTES


def _parent_map() -> dict[int, list[int]]:
    """Children of every process, from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited while we looked
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...)."""
    tree = _parent_map()
    found: list[int] = []
    seen = {pid}
    frontier = [pid]
    while frontier:  # each pid enters the frontier once (seen), so this ends
        nxt: list[int] = []
        for parent in frontier:
            for child in tree.get(parent, ()):
                if child not in seen:
                    seen.add(child)
                    found.append(child)
                    nxt.append(child)
        frontier = nxt
    return found


def rss_bytes(pid: int, include_children: bool = True) -> int:
    """Resident set size of `pid` in bytes, plus that of its descendants by default."""
    if not PROC.is_dir():
        raise ProcessGoneError("/proc is not available: rss_bytes needs Linux")
    own = _own_rss(pid)
    if own is None:
        raise ProcessGoneError(f"no process with pid {pid}; pass the pid of a running process")
    if own == 0:
        # No user memory at all: exiting (its memory already released), a zombie waiting for
        # its parent, or a kernel thread. None of them is a process to measure.
        raise ProcessGoneError(
            f"the process with pid {pid} has exited (or is a kernel thread); pass a running one"
        )
    if not include_children:
        return own
    # A child that exits between the listing and the read simply adds nothing.
    return own + sum(_own_rss(child) or 0 for child in descendants(pid))


class RssSampler:
    """Samples `rss_bytes(pid)` every `interval_s` in a daemon thread until stopped.

    `with RssSampler(pid, 1.0) as sampler: ...` or `start()` / `stop()`. `samples` holds
    (seconds since start, bytes); sampling ends by itself when the process exits.
    """

    def __init__(
        self,
        pid: int,
        interval_s: float = 1.0,
        include_children: bool = True,
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> None:
        if not interval_s > 0:
            raise LmforgeError(f"interval_s={interval_s!r}: use a positive number of seconds")
        self.pid = pid
        self.interval_s = interval_s
        self.include_children = include_children
        self.max_samples = max_samples
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def start(self) -> RssSampler:
        if self._thread is not None:
            raise LmforgeError("this RssSampler is already running; stop() it first")
        rss_bytes(self.pid, self.include_children)  # fail here, not silently in the thread
        self._stop.clear()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while len(self.samples) < self.max_samples:
            try:
                value = rss_bytes(self.pid, self.include_children)
            except ProcessGoneError:
                return
            self.samples.append((time.monotonic() - self._t0, value))
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> list[tuple[float, int]]:
        """Stop sampling (after one last sample when the process still runs); the samples."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=max(5.0, 2 * self.interval_s))
            if len(self.samples) < self.max_samples:
                try:
                    value = rss_bytes(self.pid, self.include_children)
                    self.samples.append((time.monotonic() - self._t0, value))
                except ProcessGoneError:
                    pass
        return self.samples

    @property
    def peak_bytes(self) -> int:
        return max((b for _, b in self.samples), default=0)

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
