"""DeepSpeed's CPU all-reduce buffers in /dev/shm, which DeepSpeed never removes."""

from __future__ import annotations

import os
from pathlib import Path


def release_shm_buffers(addr: str | None = None, port: str | None = None, local_rank: int | None = None) -> None:
    """Unlink a rank's DeepSpeed CPU all-reduce buffer (/dev/shm, ~70 MB a rank): on a CPU host every run would
    otherwise leave it behind in RAM-backed tmpfs. By default this process's (MASTER_ADDR, MASTER_PORT, LOCAL_RANK
    from the environment). Safe once the rank's last collective is done: a mapping lives on until its process exits."""
    addr, port = addr or os.environ.get("MASTER_ADDR"), port or os.environ.get("MASTER_PORT")
    if not (addr and port) or not os.path.isdir("/dev/shm"):
        return
    local_rank = os.environ.get("LOCAL_RANK", "0") if local_rank is None else local_rank
    for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{addr}_{port}_{local_rank}"):
        path.unlink(missing_ok=True)
