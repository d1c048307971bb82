"""Handing back what training held before the end-of-run work (the export of the best checkpoint), so that the end
of a run does not raise its whole-process peak above the training peak."""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger(__name__)


def release_engine(engine) -> None:
    """Detach a DeepSpeed engine from its model, gradients and optimizer states: its hooks are removed
    (`engine.destroy()`) and its optimizers, scheduler and module dropped, so that little is left once the caller
    drops its own references to `engine` (the engine still maps parameters to names) and calls `return_freed_memory`."""
    engine.destroy()
    for holder in ("optimizer", "basic_optimizer", "client_optimizer", "lr_scheduler", "client_lr_scheduler",
                   "module"):
        if hasattr(engine, holder):
            setattr(engine, holder, None)


def return_freed_memory() -> None:
    """Collect reference cycles (parameters, hooks and optimizers refer to each other) and have glibc return the
    freed pages to the OS (`malloc_trim`), so that later allocations reuse them instead of adding to the resident set.
    With `MALLOC_MMAP_THRESHOLD_` set low, large blocks are unmapped on free anyway; without it this is what hands
    back the heap."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: the allocator keeps what it keeps
        log.debug("malloc_trim unavailable")
