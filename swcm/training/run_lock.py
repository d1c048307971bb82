"""One writer per run directory: rank 0 holds an flock on RUN/.lock for the run's life.

The kernel releases an flock when the last descriptor of its holder closes, so a job that dies (SIGKILL, OOM,
a crashed node on a local disk) never leaves a lock that blocks the next one; the file itself stays and only says
who held it last.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from swcm.config import ConfigError

LOCK_NAME = ".lock"


def hold_run_lock(out: Path) -> IO[str]:
    """Take RUN/.lock for this process and record who holds it; keep the returned file open for the run's life.
    ConfigError naming the holder when another live job holds it."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK_NAME, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = " ".join(f.read().split()) or "a process that has not said who it is yet"
        f.close()
        raise ConfigError(f"--out {out} is in use by another job ({holder}); wait for it to end, stop it, or "
                          "choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: "
            f"{' '.join(sys.argv)}\n")
    f.flush()
    return f
