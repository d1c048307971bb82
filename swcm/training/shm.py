"""DeepSpeed's CPU all-reduce buffers in /dev/shm, which DeepSpeed never removes."""

from __future__ import annotations

import os
from pathlib import Path


def release_shm_buffers(addr: str | None = None, port: str | None = None, rank: int | str | None = None) -> None:
    """Unlink a rank's DeepSpeed CPU all-reduce buffer (/dev/shm, ~70 MB a rank; DeepSpeed names it by the global
    rank), which would otherwise stay in RAM-backed tmpfs after the run. By default this process's (MASTER_ADDR,
    MASTER_PORT, RANK from the environment). Safe once every rank has mapped it (after init_distributed): a mapping
    lives on until its process exits."""
    addr, port = addr or os.environ.get("MASTER_ADDR"), port or os.environ.get("MASTER_PORT")
    if not (addr and port) or not os.path.isdir("/dev/shm"):
        return
    rank = os.environ.get("RANK", "0") if rank is None else rank
    for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{addr}_{port}_{rank}"):
        path.unlink(missing_ok=True)
