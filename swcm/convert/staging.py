"""Writing a directory all at once: built beside its final place, renamed into it only when complete."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def staged_directory(out_dir: str | Path) -> Iterator[Path]:
    """A new, empty directory beside `out_dir` to write into. When the block ends without an exception it replaces
    `out_dir` (the old one is renamed away first and removed last, so there is always a complete `out_dir` or
    the old one); otherwise it is removed and `out_dir` stays as it was (absent, or its previous content)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        staging.chmod(0o755)   # mkdtemp makes it private; the result is an ordinary directory
        yield staging
        if out_dir.exists():
            retired = out_dir.with_name(f".{out_dir.name}.old-{staging.name.rsplit('-', 1)[-1]}")
            out_dir.rename(retired)
            staging.rename(out_dir)
            shutil.rmtree(retired)
        else:
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
