"""Handing back what training held before the end-of-run work (the export of the best checkpoint), so that the end
of a run does not raise its whole-process peak above the training peak."""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger(__name__)


def release_engine(engine) -> None:
    """Let go of a DeepSpeed engine's model, gradients and optimizer states: its hooks are removed
    (`engine.destroy()`), the reference cycles between parameters, hooks and optimizer are collected, and glibc
    returns the freed pages to the OS (`malloc_trim`), so that later allocations reuse them instead of adding to the
    process's resident set. The caller must drop its own references to `engine` (and its optimizer / scheduler)."""
    engine.destroy()
    for holder in ("optimizer", "basic_optimizer", "client_optimizer", "lr_scheduler", "client_lr_scheduler",
                   "module"):
        if hasattr(engine, holder):   # in case something outside still holds the engine itself
            setattr(engine, holder, None)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: the allocator keeps what it keeps
        log.debug("malloc_trim unavailable")
