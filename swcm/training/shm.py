"""DeepSpeed's CPU all-reduce buffers in /dev/shm, which DeepSpeed never removes."""

from __future__ import annotations

import os
from pathlib import Path


def release_shm_buffers() -> None:
    """Unlink this rank's DeepSpeed CPU all-reduce buffer (/dev/shm, ~70 MB a rank): on a CPU host every run would
    otherwise leave it behind in RAM-backed tmpfs. Safe once this rank's last collective is done: the mapping lives
    on until the process exits."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (addr and port) or not os.path.isdir("/dev/shm"):
        return
    local_rank = os.environ.get("LOCAL_RANK", "0")
    for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{addr}_{port}_{local_rank}"):
        path.unlink(missing_ok=True)
