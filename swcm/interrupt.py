"""SIGTERM and SIGINT as an exception, so an entry point cleans up on the way out and ends with one
`error: interrupted` line and the shell's status for the signal (128 + its number: 130 for SIGINT, 143 for
SIGTERM), as schedulers (SLURM, Kubernetes) and Ctrl-C send them."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM or SIGINT arrives; `exit_status` is 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_status = 128 + signum


def _raise(signum, _frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise `Interrupted` in the main thread; the previous handlers come
    back afterwards. Outside the main thread (where Python cannot set handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
