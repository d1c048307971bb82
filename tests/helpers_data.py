"""Small builders shared by the data tests."""

from pathlib import Path


def head_lines(src: Path, dst: Path, n: int) -> str:
    """Copy the first `n` lines of `src` (bytes as they are) to `dst`; return `dst` as a string."""
    dst.write_bytes(b"".join(src.read_bytes().splitlines(keepends=True)[:n]))
    return str(dst)
