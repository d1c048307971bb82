"""The one rule for every output a tool writes or replaces: never destroy what is not ours.

An output is refused, before any work and with nothing touched, when it is, contains, or lies inside one of the
command's inputs (compared as resolved paths, so symlinks and `..` do not hide it). `--overwrite` replaces only a
directory this project wrote: one carrying our marker file, or what older swcm versions wrote before the marker
existed (a shard set's index.json, an SWCM or encoder model directory we exported, a run directory, a universal
checkpoint). Every refusal is an `OutputError` whose message is the text after `error: `.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterable

from swcm.atomic_write import temporary_file_prefix, write_atomic

log = logging.getLogger(__name__)

MARKER = ".swcm-output"   # JSON {"kind": ...}, written into every directory an swcm tool produces
FULL_BELOW = 1 << 20       # bytes free under which a failed write is taken for a full disk: less than one tensor
FOUND_SHOWN = 5           # names listed when refusing a foreign directory: enough to recognise it, one line


class OutputError(ValueError):
    """An output location that must not or cannot be written; the message names the path and what was found."""


def mark_ours(directory: str | Path, kind: str) -> None:
    """Write our marker into `directory` (which must exist), recording what kind of output it is ("shards",
    "model", "run", "universal", ...), so that a later `--overwrite` may replace it."""
    write_atomic(Path(directory) / MARKER, json.dumps({"kind": kind}) + "\n")


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def is_ours(directory: str | Path) -> str | None:
    """What kind of swcm output `directory` is, or None when nothing in it says swcm wrote it. Recognised: our
    marker; and, from versions before the marker, a shard set (index.json of format "swcm-shards"), an exported
    model (config.json of an SWCM model, or training_config.json as to-hf writes it), a run directory (config.json
    with the trainer's "run" and "deepspeed" records) and a universal checkpoint (swcm_universal.json)."""
    from swcm.data.shards import FORMAT, INDEX_NAME
    from swcm.hf_dir import SWCM, dir_kind

    d = Path(directory)
    marker = _json(d / MARKER)
    if isinstance(marker, dict) and isinstance(marker.get("kind"), str):
        return marker["kind"]
    index = _json(d / INDEX_NAME)
    if isinstance(index, dict) and index.get("format") == FORMAT:
        return "shards"
    if dir_kind(d) == SWCM:
        return "model"
    run_record = _json(d / "training_config.json")   # an export of ours: SWCM model or MLM-pretrained encoder
    if isinstance(run_record, dict) and {"run", "task"} <= run_record.keys() and (d / "config.json").is_file():
        return "model"
    run_record = _json(d / "config.json")
    if isinstance(run_record, dict) and {"run", "deepspeed"} <= run_record.keys():
        return "run"
    if isinstance(_json(d / "swcm_universal.json"), dict):
        return "universal"
    return None


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _relation(out: Path, inp: Path) -> str | None:
    """How resolved `out` and `inp` overlap: "is", "contains", "lies inside", or None."""
    if out == inp or (out.exists() and inp.exists() and os.path.samefile(out, inp)):
        return "is"
    if out in inp.parents:
        return "contains"
    if inp in out.parents:
        return "lies inside"
    return None


def _check_apart(out: str | Path, inputs: Iterable[str | Path | None], flag: str) -> None:
    resolved = _resolved(out)
    for inp in inputs:
        if inp is None:
            continue
        relation = _relation(resolved, _resolved(inp))
        if relation:
            what = "the input" if relation == "is" else f"{relation} the input"
            raise OutputError(f"{flag} {out} {what} {inp}; choose an output outside every input")


def check_output_dir(out: str | Path, inputs: Iterable[str | Path | None], *, overwrite: bool,
                     flag: str = "--out") -> None:
    """Return when directory `out` may be written: it is absent or empty, or (with `overwrite`) a directory swcm
    wrote; and it neither is, contains nor lies inside any of `inputs` (files or directories; None entries are
    skipped). Otherwise raise OutputError naming `flag`, the path and what was found. Temporaries that a killed
    writer of `out` left are removed first (`remove_stale_temporaries`), and a previous output it had set aside
    is put back, so that it is found here."""
    _check_apart(out, inputs, flag)
    remove_stale_temporaries(out)
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {out} exists and is not a directory")
    if not path.is_dir():
        return
    try:
        found = sorted(p.name for p in path.iterdir())
    except OSError as e:
        raise OutputError(f"{flag} {out}: {e.strerror}") from None
    # A run's lock and our marker (or its temporary) alone: the directory is being started by another rank of the
    # same job, which checks and marks it while the others check it too.
    if not [name for name in found if name != ".lock" and not name.startswith((MARKER, temporary_file_prefix(MARKER)))]:
        return
    if not overwrite:
        raise OutputError(f"{flag} {out} exists and is not empty (pass --overwrite to replace it)")
    if is_ours(path) is None:
        shown = ", ".join(found[:FOUND_SHOWN]) + (f", ... ({len(found)} entries)" if len(found) > FOUND_SHOWN else "")
        raise OutputError(f"{flag} {out} was not written by swcm (it holds {shown}); --overwrite replaces only an "
                          "output of ours: choose a new directory, or remove this one yourself")


def check_output_file(out: str | Path, inputs: Iterable[str | Path | None], *, flag: str) -> None:
    """Return when file `out` may be written: it is not a directory and neither is nor lies inside any of `inputs`
    (None entries are skipped). Otherwise raise OutputError naming `flag`, the path and what was found."""
    _check_apart(out, inputs, flag)
    if Path(out).is_dir():
        raise OutputError(f"{flag} {out} is a directory; give a file name")


def os_error_line(e: OSError, path: str | Path | None = None) -> str:
    """`PATH: reason` for an OSError on an output, the text after `error: `; a full disk is named as such."""
    where = path if path is not None else (e.filename if e.filename is not None else "output")
    reason = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return f"{where}: {reason}"


def output_error(e: BaseException, path: str | Path) -> OutputError | None:
    """The OutputError `PATH: reason` for exception `e` raised while writing `path`: for an OSError, and for any
    error raised when the disk was full (torch.save reports ENOSPC as `RuntimeError: [enforce fail at
    inline_container.cc] ... file write failed`, safetensors in its own error type) as "no space left on device".
    None for anything else, which is not about the output location."""
    full = "No space left on device" in str(e) or _disk_full(path)   # safetensors says so in its own error type
    if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, NotADirectoryError)) or full:
        if not isinstance(e, OSError):
            e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return OutputError(os_error_line(e, path))
    return None


def _disk_full(path: str | Path) -> bool:
    where = next((p for p in [Path(path), *Path(path).absolute().parents] if p.is_dir()), Path("/"))
    try:
        return shutil.disk_usage(where).free < FULL_BELOW
    except OSError:
        return False


def check_writable(out: str | Path, *, flag: str = "--out", reserve: int = 1 << 20) -> None:
    """Return when a file can be created where `out` will be written (in `out` if it is an existing directory,
    else in its nearest existing parent) and `reserve` bytes fit there; otherwise raise OutputError with
    `flag PATH: reason`. The probe file is removed again. 1 MiB by default: enough to catch a read-only or full
    location before the work, without pretending to know the output's final size."""
    target = Path(out)
    where = target if target.is_dir() else next((p for p in target.absolute().parents if p.is_dir()), Path("/"))
    probe = where / f".swcm-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * reserve)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputError(f"{flag} {os_error_line(e, out)}") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


# -- temporaries ------------------------------------------------------------------------------------------------------
# A temporary beside an output is named `.OUT.tmp-HOST-PID-XXXX` (a retired previous output `.OUT.old-HOST-PID-XXXX`),
# so that the next writer of the same output can tell one a killed run left (its pid is gone from this host) from one
# a live process is still writing, and removes only the former. '-' separates the fields, so the host has none.


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())


def temporary_prefix(out: str | Path, role: str = "tmp") -> str:
    """The name prefix of this process's temporaries beside `out` (`role` "tmp" for one being written, "old" for
    the previous output set aside while the new one is renamed in); a unique suffix follows it."""
    return f".{Path(out).name}.{role}-{_host()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process: alive
        pass
    return True


def remove_stale_temporaries(out: str | Path) -> None:
    """Remove the temporaries that a killed writer of `out` left beside it on this host; a previous output it had
    set aside, whose replacement never arrived, is put back in place instead. Temporaries of live processes, of
    other hosts and names we did not make are left alone."""
    out = Path(out)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-{re.escape(_host())}-(\d+)-[^-]+")
    if not out.parent.is_dir():
        return
    for path in sorted(out.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if not match or _alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not out.exists():
            path.rename(out)
            log.warning("%s: put back the previous output, which a killed writer had set aside", out)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by a killed writer", path)
        else:
            path.unlink(missing_ok=True)
            log.info("removed %s, left by a killed writer", path)
