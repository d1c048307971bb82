"""Command-line output to a reader that may stop early (`... | head -1`)."""

from __future__ import annotations

import os
import signal
import sys


def closed_pipe_status() -> int:
    """What a command-line entry point returns once writing stdout raised BrokenPipeError: the status SIGPIPE would
    give (141, as `yes | head` ends). Points stdout at /dev/null, so that the flush at interpreter exit does not
    report the broken pipe a second time for what is still buffered."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE
