"""SIGINT and SIGTERM as one line: an entry point stops where it is, its temporary files go (they are removed on
any exception, see swcm/atomic_write.py), and it exits as a shell reports a signal: 128 + the signal's number."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Iterator


class Terminated(Exception):
    """SIGTERM arrived (raised by the handler `exit_on_interrupt` installs)."""


class Interrupted(SystemExit):
    """Raised by `exit_on_interrupt` after printing `error: interrupted`; its code is 130 or 143."""


def _terminate(signum, frame):
    raise Terminated()


@contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises Terminated; Ctrl-C's KeyboardInterrupt and Terminated become `error: interrupted` on
    stderr and exit status 130 (SIGINT) or 143 (SIGTERM), with no traceback."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise Interrupted(128 + signal.SIGINT) from None
    except Terminated:
        print("error: interrupted", file=sys.stderr)
        raise Interrupted(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
