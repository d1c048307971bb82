"""DeepSpeed's CPU shared-memory collective op, loaded so that a killed process cannot make later runs wait forever."""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def load_shm_comm_op() -> None:
    """Build (first time) or load DeepSpeed's `deepspeed_shm_comm` op before the process group starts, so that
    `deepspeed.init_distributed` finds it loaded. No-op where the accelerator has no such op (GPUs) or DeepSpeed
    was installed with it prebuilt.

    torch's JIT loader guards every load, not only the build, with a plain lock file; a process killed inside that
    window (a scheduler's SIGKILL, a crashed rank) leaves the file behind, and every later run of any job then waits
    on it silently, for ever. Here loads are serialised by an flock, which the kernel releases when its holder dies:
    whoever holds it and still finds the lock file knows it is stale, and removes it."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops
    from torch.utils.cpp_extension import _get_build_directory

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False) \
            or installed_ops.get(builder.NAME, False):
        return
    build_dir = Path(_get_build_directory(builder.NAME, verbose=False))
    with open(build_dir / "swcm.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        stale = build_dir / "lock"
        if stale.exists():
            log.warning("removing %s, left by a process killed while it loaded the op (nothing else holds it)",
                        stale)
            stale.unlink(missing_ok=True)
        builder.load(verbose=False)
