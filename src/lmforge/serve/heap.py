"""Keep the garbage collector's full passes short in a long-running server."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("lmforge.serve")


def freeze_heap(when: str, collect: bool = True) -> int:
    """Move every object alive now out of the garbage collector's sight (`gc.freeze`).

    A loaded server holds a few hundred thousand container objects (torch, pydantic, FastAPI,
    SQLAlchemy, the models' tokenizers), and a full collection walks them all: about 0.3 s on
    a 2-core machine, during which no request moves; that was the p99. Frozen objects are
    never scanned again but are still freed by reference counting. `collect` first clears
    what is already garbage, so nothing cyclic is frozen; it is a pause itself, so it is only
    for when no request is waiting (startup). Returns the number of objects frozen.
    """
    if collect:
        gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d objects alive at %s; full collections now skip them", frozen, when)
    return frozen
