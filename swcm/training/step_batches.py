"""Each optimizer step's micro-batches for one rank, in a data order that does not depend on the current layout.

A run's data layout is fixed when its data starts: V ranks x G micro-batches a step (the run's first world size
and gradient accumulation). A step is the V*G micro-batches that those V "data ranks" would read, listed data rank
by data rank; on W ranks with G' = V*G / W micro-batches each, rank p takes entries [p*G', (p+1)*G'). It runs the
streams of the data ranks its entries come from and skips their other entries, so every step holds the same
samples, with the same noise, on any number of ranks: the step's per-token loss and gradient are the same, and
after a resume on another world size no sample is lost or read twice.
"""

from __future__ import annotations

from typing import Callable, Iterator


class StepBatches:
    """Micro-batches of rank `rank` of `world` (`gas` a step) from the streams of data ranks `make_stream(v)`,
    v < data_world, each yielding `data_gas` micro-batches a step. Iterating yields this rank's micro-batches in
    step order; the state is the data ranks' common position plus the data layout."""

    def __init__(self, make_stream: Callable[[int], object], *, data_world: int, data_gas: int, world: int,
                 gas: int, rank: int):
        if data_world * data_gas != world * gas:
            raise ValueError(f"{world} ranks x {gas} micro-batches cannot hold the data layout's steps of "
                             f"{data_world} x {data_gas} = {data_world * data_gas} micro-batches")
        self.data_world, self.data_gas = data_world, data_gas
        self.take = [divmod(e, data_gas) for e in range(rank * gas, (rank + 1) * gas)]   # (data rank, micro)
        self.streams = {v: make_stream(v) for v in sorted({v for v, _ in self.take})}

    def __iter__(self) -> Iterator[dict]:
        iters = {v: iter(s) for v, s in self.streams.items()}
        wanted = set(self.take)
        try:
            while True:
                step = {}
                for v, it in iters.items():
                    for m in range(self.data_gas):
                        batch = next(it)
                        if (v, m) in wanted:
                            step[(v, m)] = batch
                yield from (step[e] for e in self.take)
        finally:
            for it in iters.values():
                close = getattr(it, "close", None)
                if close is not None:
                    close()

    def state_dict(self) -> dict:
        """The data layout and the data ranks' position (the same for all of them at a step boundary)."""
        first = next(iter(self.streams.values()))
        return {"data_world": self.data_world, "data_gas": self.data_gas, "stream": first.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a loader state saved by any layout of this run's data (or an older stream-only state)."""
        for stream in self.streams.values():
            stream.load_state_dict(stream_state(state))


def data_layout(loader_state: dict | None, *, source_world: int, source_gas: int) -> tuple[int, int]:
    """(data ranks, micro-batches a step) of a saved run: recorded in its loader state, else (a run saved before
    the layout was recorded) the layout it ran on."""
    if loader_state and "data_world" in loader_state:
        return int(loader_state["data_world"]), int(loader_state["data_gas"])
    return source_world, source_gas


def stream_state(loader_state: dict) -> dict:
    """The data ranks' stream state inside a loader state (older checkpoints saved the stream's state alone)."""
    return loader_state["stream"] if "data_world" in loader_state else loader_state
