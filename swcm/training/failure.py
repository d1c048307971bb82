"""How a training process ends when something raises: one `error:` line for the whole job, nothing waited for.

The first rank to fail (counted in the process group's store) prints `error: rank R: <cause>`, or for an output
that could not be written (read-only, full disk) `error: PATH: <reason> (rank R; ...)`; ranks that fail
after it, usually because a collective lost that rank, print a plain line saying so. Every rank then leaves at
once with `os._exit`, skipping atexit work that could wait on dead peers; its loader workers die with it, and the
launcher ends the other ranks.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import traceback
from pathlib import Path

from swcm.atomic_write import write_atomic
from swcm.cli_exit import end_progress_bars
from swcm.output_guard import OutputError, os_error_line

log = logging.getLogger(__name__)

EXIT_FAILED = 1
STORE_KEY = "swcm/failures"


_claimed: bool | None = None   # this process's answer from the store, once asked


def claim_failure() -> bool:
    """Count this rank's failure in the process group's store, once per process, and return whether it was the
    job's first (True when there is no process group or store to ask). Code that cleans up after an error that
    other ranks can trip over (a half-written checkpoint directory they are still writing into) claims first, so
    that the error line names the cause, not what the clean-up did to the others."""
    global _claimed
    if _claimed is None:
        _claimed = _first_to_fail()
    return _claimed


def _first_to_fail() -> bool:
    """Whether this rank is the job's first failure, by the store's count (True without a process group)."""
    try:
        import torch.distributed as dist

        if not dist.is_initialized():
            return True
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(datetime.timedelta(seconds=5))   # the store's host may be the rank that died
        return store.add(STORE_KEY, 1) == 1
    except Exception:   # no store, or its host is gone: the host failed first and said so
        return False


def _keep_traceback(exc: BaseException, out_dir: Path, rank: int) -> Path | None:
    """Write the traceback to RUN/errors/rank{R}.txt if the disk allows; returns the path, or None (and no empty
    or cut file left behind)."""
    path = out_dir / "errors" / f"rank{rank}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, "".join(traceback.format_exception(exc)))
        return path
    except OSError:
        return None


def _cause(exc: BaseException) -> str:
    """The error line's text: `PATH: reason` for an output that could not be written, else `Type: first line`."""
    if isinstance(exc, OSError):
        return os_error_line(exc)
    if isinstance(exc, OutputError):
        return str(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}".rstrip(": ")


def exit_on_failure(exc: BaseException, out_dir: Path, rank: int, cleanup=()) -> None:
    """Report `exc` (one `error:` line if this rank failed first), run the `cleanup` callables, and end the
    process with EXIT_FAILED. Never returns."""
    cause = _cause(exc)
    where = _keep_traceback(exc, out_dir, rank)
    kept = f"traceback: {where}" if where else ""
    if not claim_failure():
        line = f"rank {rank} stopped after another rank's failure: {cause}" + (f" ({kept})" if kept else "")
    elif isinstance(exc, (OSError, OutputError)):   # the path and its cause first: what the user acts on
        line = f"error: {cause} (rank {rank}" + (f"; {kept})" if kept else ")")
    else:
        line = f"error: rank {rank}: {cause}" + (f" ({kept})" if kept else "")
    end_progress_bars()
    print(line, file=sys.stderr, flush=True)
    for fn in cleanup:
        try:
            fn()
        except Exception:
            pass
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_FAILED)
