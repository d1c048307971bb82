"""DeepSpeed's CPU shared-memory collective op, built in a folder of our own (see swcm/__init__.py) and loaded so that
a killed process cannot make later runs wait forever; a build or a wait is announced by one log line first."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def own_extensions_dir() -> Path | None:
    """The JIT build folder that only swcm uses: `torch_extensions` in the virtual environment when swcm chose it
    (the user set no TORCH_EXTENSIONS_DIR); None when the folder is the user's or torch's shared default."""
    own = Path(sys.prefix) / "torch_extensions"
    chosen = os.environ.get("TORCH_EXTENSIONS_DIR")
    return own if sys.prefix != sys.base_prefix and chosen and Path(chosen) == own else None


def load_shm_comm_op() -> None:
    """Build (first time) or load DeepSpeed's `deepspeed_shm_comm` op before the process group starts, so that
    `deepspeed.init_distributed` finds it loaded. No-op where the accelerator has no such op (GPUs) or DeepSpeed
    was installed with it prebuilt.

    torch's JIT loader guards every load, not only the build, with a plain lock file; a process killed inside that
    window (a scheduler's SIGKILL, a crashed rank) leaves the file behind, and every later run then waits on it
    silently, for ever. Here loads are serialised by an flock, which the kernel releases when its holder dies:
    whoever holds it and still finds the lock file knows it is stale, and removes it. Only in our own folder:
    elsewhere the lock file may belong to another program that builds the op without our flock, so it is waited
    for, with a line saying so."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops
    from torch.utils.cpp_extension import _get_build_directory

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False) \
            or installed_ops.get(builder.NAME, False):
        return
    build_dir = Path(_get_build_directory(builder.NAME, verbose=False))
    own = own_extensions_dir()
    with open(build_dir / "swcm.flock", "w") as guard:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another swcm process that builds or loads DeepSpeed's %s op in %s", builder.NAME,
                     build_dir)
            fcntl.flock(guard, fcntl.LOCK_EX)
        lock = build_dir / "lock"
        if lock.exists() and own is not None and own in build_dir.parents:
            log.warning("removing %s, left by a process killed while it loaded the op (nothing else holds it)", lock)
            lock.unlink(missing_ok=True)
        elif lock.exists():
            log.warning("waiting for %s: another program builds or loads the op in this shared folder (if none does, "
                        "a killed one left it: remove it)", lock)
        if not (build_dir / f"{builder.NAME}.so").is_file():
            log.info("building DeepSpeed's %s op in %s (once per environment, 1-2 minutes)", builder.NAME, build_dir)
        builder.load(verbose=False)
