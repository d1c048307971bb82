"""How a command-line tool ends: one `error:` line and an exit status, never a traceback, for what the user can act
on. Bad input is status 2; an OSError (read-only, full or missing location) is `error: PATH: reason`, status 1;
SIGINT / SIGTERM is `error: interrupted`, status 130 / 143 (128 + the signal, as a shell reports a killed job),
after the `finally` blocks on the way out have removed what the interrupted work left half-written."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from swcm.output_guard import os_error_line

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived. A KeyboardInterrupt, so that `except Exception` code does not swallow it and
    clean-up written for Ctrl-C runs for a scheduler's SIGTERM too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


@contextmanager
def interrupts_raised() -> Iterator[None]:
    """Within the block SIGTERM and SIGINT raise `Interrupted` where the main thread is. The first one does; the
    ones after it (a terminal's Ctrl-C and a scheduler's SIGTERM often come together) are ignored until the block
    has ended, so that clean-up is not cut short. The previous handlers are put back at the end."""
    def handle(signum, frame):
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def end_progress_bars() -> None:
    """Close the progress bars that are still open (a loop the error left): each ends its line, so that what is
    printed next begins a line of its own instead of continuing a half-drawn bar."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        for bar in list(tqdm.tqdm._instances):
            bar.close()


def print_error(message: str) -> None:
    """Print `error: <message>` on stderr as a line of its own (open progress bars are ended first)."""
    end_progress_bars()
    print(f"error: {message}", file=sys.stderr, flush=True)


def run_reporting(work: Callable[[], object], user_errors: tuple[type[BaseException], ...]) -> int:
    """Call `work()` with interrupts raised; return 0, or print one `error:` line on stderr (on a line of its own)
    and return the status (2 for `user_errors`, 1 for an OSError, 128 + signal for an interrupt)."""
    try:
        with interrupts_raised():
            work()
    except Interrupted as e:
        print_error("interrupted")
        return e.exit_code
    except user_errors as e:
        print_error(str(e))
        return 2
    except OSError as e:
        print_error(os_error_line(e))
        return 1
    return 0
