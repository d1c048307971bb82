"""How a command-line tool ends (swcm/cli_exit.py): the `error:` line begins a line of its own even when the work
stopped while a progress bar was open (a bar in flight has written no newline yet, and one held in a local variable
stays open as long as the traceback does), with the status of its cause."""

import signal

import pytest
from tqdm import tqdm

from swcm.cli_exit import Interrupted, run_reporting


class BadInput(Exception):
    pass


@pytest.mark.parametrize("cause,status,line", [(Interrupted(signal.SIGTERM), 143, "error: interrupted"),
                                               (BadInput("shard 3 is corrupt"), 2, "error: shard 3 is corrupt"),
                                               (FileNotFoundError(2, "No such file", "/x/y"), 1, "error: /x/y: ")],
                         ids=["sigterm", "user_error", "os_error"])
def test_the_error_line_starts_a_line_when_a_progress_bar_is_open(capsys, cause, status, line):
    def work():   # as transformers loads a checkpoint: a bar it updates and closes itself
        bar = tqdm(total=10, desc="Loading checkpoint shards")
        for i in range(10):
            bar.update()
            if i == 3:
                raise cause
        bar.close()

    assert run_reporting(work, (BadInput,)) == status
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(line), lines
    assert lines[-1] == errors[0], lines   # nothing after it, and the bar ended before it


def test_skip_final_gc_freezes_after_the_handlers_registered_later(tmp_path):
    """At exit the collector stops seeing the live objects, but only after the exit handlers registered after
    skip_final_gc() (a writer's flush, the script's own) have run with it untouched; what they write arrives whole."""
    import subprocess
    import sys

    out = tmp_path / "flushed.txt"
    script = f"""
import atexit, gc
handle = open({str(out)!r}, "w")
def flush():   # registered before skip_final_gc: runs after it
    handle.write(f"frozen after: {{gc.get_freeze_count() > 0}}\\n")
    handle.close()
atexit.register(flush)
from swcm.fast_exit import skip_final_gc
skip_final_gc()
atexit.register(lambda: handle.write(f"frozen before: {{gc.get_freeze_count()}}\\n" + "x" * 100_000 + "\\n"))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert out.read_text().splitlines() == ["frozen before: 0", "x" * 100_000, "frozen after: True"]
