"""Files that readers see whole or not at all: every file swcm writes for a user (checkpoint markers, shard indexes,
predictions, scores, tables) goes through here."""

from __future__ import annotations

import os
from pathlib import Path


def temporary_file_prefix(name: str) -> str:
    """How the temporaries of file `name` written here begin (then this process's pid and `.tmp`)."""
    return f".{name}."


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one, never a part: through a
    temporary name in the same directory (removed if writing fails), synced, then renamed over `path`. The file gets
    the permissions of any new file (the umask), as a plain `open` would give it."""
    path = Path(path)
    tmp = path.with_name(f"{temporary_file_prefix(path.name)}{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))
