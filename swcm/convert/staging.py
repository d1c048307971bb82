"""Writing a directory all at once: built beside its final place, renamed into it only when complete. The
temporaries are named by `swcm.output_guard.temporary_prefix`, so that the next writer removes those of a killed
run."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from swcm.output_guard import mark_ours, output_error, remove_stale_temporaries, temporary_prefix


@contextmanager
def staged_directory(out_dir: str | Path, kind: str = "model") -> Iterator[Path]:
    """A new, empty directory beside `out_dir` to write into. When the block ends without an exception it gets our
    output marker (`kind`) and replaces `out_dir` (the old one is renamed away first and removed last, so there is
    always a complete `out_dir` or the old one); otherwise it is removed and `out_dir` stays as it was (absent, or
    its previous content). An OSError or a full disk while writing is raised as an OutputError naming `out_dir`.
    Temporaries of a killed earlier writer are removed first."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=temporary_prefix(out_dir), dir=out_dir.parent))
    try:
        staging.chmod(0o755)   # mkdtemp makes it private; the result is an ordinary directory
        try:
            yield staging
            mark_ours(staging, kind)
        except Exception as e:
            named = output_error(e, out_dir)
            if named is None:
                raise
            raise named from None
        if out_dir.exists():
            retired = out_dir.with_name(temporary_prefix(out_dir, "old") + staging.name.rsplit("-", 1)[1])
            out_dir.rename(retired)
            staging.rename(out_dir)
            shutil.rmtree(retired)
        else:
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)

