"""Stop requests from schedulers and terminals: SIGTERM / SIGINT end the run after the current step."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)


class StopRequest:
    """Installs SIGTERM and SIGINT handlers that only set `requested`; the loop agrees on it across ranks at the end
    of a step, saves and exits 0. `restore()` puts the previous handlers back."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, rank: int):
        self.rank, self.requested = rank, False
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            log.warning("rank %d received %s: saving a checkpoint after this step", self.rank,
                        signal.Signals(signum).name)
        self.requested = True

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
