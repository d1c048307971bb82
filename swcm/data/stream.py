"""The resumable multi-rank pretraining stream: shards -> mixed, noised, token-budget batches.

`PretrainStream(cfg, tokenizer, rank=, world_size=)` yields the batch dicts of `swcm.data.batching` forever
(train) or for one epoch (dev). Which sample goes into which batch is fixed by the epoch plan
(`swcm.data.plan`), computed alike on every rank; worker processes (torch DataLoader workers, one per
(rank, worker) slot) only read their slot's shards, noise and collate, and the main process puts their
batches back into plan order. The state is therefore just a position -- the epoch and the batches yielded in it
on each layout (world size x workers) it ran on -- plus the settings that decide the plan: JSON, the same on
every rank, exact on restore, and loadable on another layout (the rest of the epoch is then re-planned, every
unread sample read once).

Worker lifecycle: workers live as long as the iteration that started them. They end when it ends, stops
early (the generator is closed or dropped) or fails, when the interpreter exits with an iterator still alive,
and -- since they ignore SIGTERM/SIGINT -- when their parent dies in any way (SIGKILL included): a parent-death
signal plus a thread that watches the parent's pid. A DataError in a worker (a corrupt shard) reaches the
consumer as that DataError.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import functools
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
import torch.utils.data  # before the atexit hook below: atexit runs hooks last-registered first

from swcm.data.batching import collate, filler_batch, to_tensors
from swcm.data.noise import DenoisingNoise
from swcm.data.plan import NOISE, EpochPlan, PlanSpec, build_plan, rng
from swcm.data.shards import INDEX_NAME, DataError, check_shards, load_lengths, read_shard, shard_url
from swcm.data.text import SENTENCE_END_CHARS

log = logging.getLogger(__name__)

STATE_FORMAT = "swcm-stream-state"
STATE_VERSION = 2
LAYOUT = ("world_size", "num_workers")   # the PlanSpec fields a state may change (see load_state_dict)


def sentence_end_table(tokenizer) -> np.ndarray:
    """Boolean array over the vocabulary: True for pieces whose last character ends a sentence."""
    table = np.zeros(len(tokenizer), dtype=bool)
    for piece, i in tokenizer.get_vocab().items():
        if i < len(table) and piece and piece[-1] in SENTENCE_END_CHARS:
            table[i] = True
    table[list(tokenizer.all_special_ids)] = False
    return table


@dataclasses.dataclass
class _Decoder:
    """What a worker needs to turn planned samples into batches (picklable, no tokenizer)."""
    shard_dir: str
    url_prefix: str
    shards: dict            # name -> index entry (sha256, samples)
    lang_tags: dict
    bos: int
    eos: int
    pad: int
    multiple: int
    noise: DenoisingNoise
    seed: int


class _SlotRunner:
    """Reads, noises and collates one slot's batches from batch `start` of its plan, in plan order."""

    def __init__(self, dec: _Decoder, plan: EpochPlan, slot: int, start: int):
        self.dec, self.plan, self.slot = dec, plan, slot
        self.sp = plan.slots[slot]
        self.start = start
        remaining = np.concatenate(self.sp.batches[start:]) if start < len(self.sp.batches) else np.zeros(0, int)
        units, counts = np.unique(self.sp.unit[remaining], return_counts=True)
        self.pending: dict[str, int] = {}   # shard -> samples still to serve from it (over all its units here)
        for u, n in zip(units.tolist(), counts.tolist()):
            shard = plan.units[u].shard
            self.pending[shard] = self.pending.get(shard, 0) + n
        self.loaded: dict[str, list] = {}

    def _sample(self, unit_id: int, offset: int) -> dict:
        shard = self.plan.units[unit_id].shard
        if shard not in self.loaded:
            info = self.dec.shards[shard]
            self.loaded[shard] = read_shard(shard_url(self.dec.shard_dir, shard, self.dec.url_prefix),
                                            expect_sha256=info["sha256"], expect_samples=info["samples"])
        sample = self.loaded[shard][offset]
        self.pending[shard] -= 1
        if self.pending[shard] == 0:   # every planned read of this shard is served: free its samples
            del self.loaded[shard]
        return sample

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        d = self.dec
        for j in range(self.start, len(self.sp.batches)):
            idx = self.sp.batches[j]
            g = rng(d.seed, NOISE, self.plan.epoch, self.slot, j, segment=self.plan.segment)
            enc, tgt, tags, task, src_lang, tgt_lang, ids = [], [], [], [], [], [], []
            for i in idx:
                s = self._sample(int(self.sp.unit[i]), int(self.sp.offset[i]))
                meta = s["meta"]
                if "ids" in s:
                    x = s["ids"]
                    a = b = meta["lang"]
                    src, y = d.noise(x, g), x
                    task.append("dae")
                else:
                    a, b = meta["src_lang"], meta["tgt_lang"]
                    src, y = s["src"], s["tgt"]
                    if self.sp.flip[i]:
                        a, b, src, y = b, a, y, src
                    task.append("mt")
                enc.append(np.concatenate([[d.bos, d.lang_tags[a]], src, [d.eos]]))
                tgt.append(y)
                tags.append(d.lang_tags[b])
                src_lang.append(a)
                tgt_lang.append(b)
                ids.append(meta["id"])
            yield j, collate(enc, tgt, tags, bos=d.bos, eos=d.eos, pad=d.pad, multiple=d.multiple, task=task,
                             src_lang=src_lang, tgt_lang=tgt_lang, sample_id=ids)


_PR_SET_PDEATHSIG = 1            # linux/prctl.h
_PARENT_POLL_S = 0.5             # how often a worker's watchdog thread checks that its parent is alive


def _watch_parent(parent_pid: int) -> None:
    """Exit this process (without cleanup: nobody is left to read its queues) once `parent_pid` is no
    longer its parent, i.e. the parent has died and the process was re-parented."""
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def _init_worker(parent_pid: int, _worker_id: int) -> None:
    """DataLoader worker_init_fn: make the worker end with its parent, however the parent ends, and leave
    SIGTERM/SIGINT to the parent.

    Schedulers (SLURM, the DeepSpeed launcher) and Ctrl-C signal the whole process tree, and a worker dying
    first would abort the checkpoint the trainer is about to write, so workers ignore both; the parent shuts
    them down itself. Nothing else would end them if the parent died, so: on Linux the kernel sends SIGKILL
    when the parent dies (PR_SET_PDEATHSIG; it follows the thread that started the iteration), and everywhere
    a daemon thread exits the worker once its parent pid changes -- which also covers a parent that died
    before the prctl call.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="swcm-parent-watch", daemon=True).start()


class _WorkerError(NamedTuple):
    """Sent by a worker in place of a batch when its slot hits a DataError; the main process raises it."""
    message: str


# DataLoader iterators whose workers are running: shut down at interpreter exit (see _stop_all_workers).
_LIVE_LOADERS: "weakref.WeakSet" = weakref.WeakSet()


def _stop_workers(batches) -> None:
    """End the worker processes of a DataLoader iterator now: torch's own shutdown (each worker is asked to
    exit and waited for, normally milliseconds), then SIGKILL for any still alive -- torch's last resort,
    SIGTERM, is ignored by them."""
    _LIVE_LOADERS.discard(batches)
    # torch has no public call for this; its __del__ would do the same, but only once nothing (a traceback, a
    # global) refers to the iterator any more.
    batches._shutdown_workers()
    for w in batches._workers:
        if w.is_alive():
            w.kill()
            w.join()


@atexit.register
def _stop_all_workers() -> None:
    """At interpreter exit, stop the workers of iterators still alive (held by a global, a traceback, an
    unfinished generator). Registered after torch's and multiprocessing's own hooks, so it runs before them:
    multiprocessing would otherwise send the workers SIGTERM, which they ignore, and wait for them forever."""
    for batches in list(_LIVE_LOADERS):
        _stop_workers(batches)


def _as_is(item):
    return item


class _RankEpochs(torch.utils.data.IterableDataset):
    """DataLoader dataset: worker w yields `slot_batches(w)`. Each worker builds the later epochs' (deterministic)
    plans itself, so one set of worker processes serves every epoch."""

    def __init__(self, stream: "PretrainStream", first: EpochPlan, starts: list[int], epochs: int | None):
        self.dec, self.spec, self.rank = stream._dec, stream.spec, stream.rank
        self.streams, self.lengths = stream.index["streams"], stream.lengths
        self.first, self.starts, self.epochs = first, starts, epochs

    def slot_batches(self, worker: int):
        """(epoch, worker, batch index, batch) of slot (rank, worker), epoch after epoch (`epochs` of them, None:
        forever): the plan `first` from batch `starts[worker]`, then each later epoch from its start, planned
        on this layout."""
        plan = self.first
        while True:
            start = self.starts[worker] if plan is self.first else 0
            for j, batch in _SlotRunner(self.dec, plan, self.rank * plan.num_workers + worker, start):
                yield plan.epoch, worker, j, batch
            if self.epochs is not None and plan.epoch + 1 >= self.first.epoch + self.epochs:
                return
            plan = build_plan(self.spec, plan.epoch + 1, self.streams, self.lengths)

    def __iter__(self):
        w = torch.utils.data.get_worker_info().id
        try:
            yield from self.slot_batches(w)
        except DataError as e:   # a corrupt shard: the consumer gets the message, not torch's worker traceback
            yield _WorkerError(str(e))


class PretrainStream:
    """Mixed DAE + MT batches for one rank of a `world_size`-rank job (see the module docstring).

    `split="train"` reads `cfg.shards` and iterates forever, epoch after epoch; `split="dev"` reads
    `cfg.dev_shards`, reads every sample exactly once (alpha and mt_ratio ignored) and always yields the same
    epoch. Raises DataError for an unusable shard set (see `check_shards`) or settings.
    """

    def __init__(self, cfg, tokenizer, *, rank: int, world_size: int, split: str = "train"):
        if split not in ("train", "dev"):
            raise DataError(f"split {split!r}: expected 'train' or 'dev'")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}")
        self.cfg, self.rank, self.world_size, self.split = cfg, rank, world_size, split
        where = cfg.shards if split == "train" else cfg.dev_shards
        if not where:
            raise DataError(f"data.{'shards' if split == 'train' else 'dev_shards'} is not set")
        self.shard_dir = Path(where)
        self.index = check_shards(self.shard_dir, tokenizer, url_prefix=cfg.shard_url_prefix)
        self.index_sha256 = hashlib.sha256((self.shard_dir / INDEX_NAME).read_bytes()).hexdigest()
        self.lengths = load_lengths(self.shard_dir, self.index)
        self.num_workers = max(1, cfg.num_workers)
        self.spec = PlanSpec(seed=cfg.seed, alpha=cfg.alpha, mt_ratio=cfg.mt_ratio, natural=split == "dev",
                             world_size=world_size, num_workers=self.num_workers, shuffle_buffer=cfg.shuffle_buffer,
                             max_tokens=cfg.max_tokens, max_samples=cfg.max_samples,
                             pad_to_multiple=cfg.pad_to_multiple, bucket_batches=cfg.bucket_batches)
        # The position: the epoch, the layout segments it ran before this layout's ((world_size, num_workers,
        # batches yielded per rank), earlier first) and the batches yielded on this layout.
        self._epoch, self._segments, self._done = 0, (), 0
        self._cached: tuple[tuple, EpochPlan] | None = None
        try:
            noise = DenoisingNoise(tokenizer.mask_token_id, cfg.mask_ratio, cfg.poisson_lambda,
                                   cfg.permute_sentences, sentence_end_table(tokenizer))
            reads = self.plan().reads   # plan epoch 0 now, so that bad mixing settings fail here
        except ValueError as e:
            raise DataError(str(e)) from None
        self._dec = _Decoder(str(self.shard_dir), cfg.shard_url_prefix, self.index["shards"],
                             self.index["tokenizer"]["lang_tags"],
                             tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                             cfg.pad_to_multiple, noise, cfg.seed)
        total = self.index["totals"]["all"]
        log.info("%s stream rank %d/%d, %d workers: %d shards, %d samples in %d streams; reads per epoch %s",
                 split, rank, world_size, self.num_workers, len(self.index["shards"]), total["samples"],
                 len(self.index["streams"]), reads)

    # -- plan -------------------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to (always 0 for the dev split)."""
        return self._epoch

    @property
    def batches_done(self) -> int:
        """Batches of the current epoch already yielded per rank, on every layout it ran on (the next batch's
        index in the epoch)."""
        return sum(done for _, _, done in self._segments) + self._done

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The plan of `epoch` (default: the current one) on this layout: for the current epoch, its rest
        re-planned if it began on another layout; for another epoch, from its start. Cached (the last one)."""
        if epoch is None or epoch == self._epoch:
            return self._plan_at(self._epoch, self._segments)
        return self._plan_at(epoch, ())

    def _plan_at(self, epoch: int, segments: tuple) -> EpochPlan:
        key = (epoch, segments)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, build_plan(self.spec, epoch, self.index["streams"], self.lengths, segments))
        return self._cached[1]

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        """Batches every rank yields in `epoch` (default: the current one; fillers included): for the current
        epoch, those yielded on earlier layouts plus this layout's plan of the rest."""
        earlier = self.batches_done - self._done if epoch is None or epoch == self._epoch else 0
        return earlier + self.plan(epoch).batches_per_rank()

    # -- iteration --------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        """Batches from the current position: forever for train, one epoch for dev."""
        if self.split == "dev":
            return self.epoch_batches()
        return self._iterate(None)

    def epoch_batches(self) -> Iterator[dict]:
        """The rest of the current epoch, from the current position; afterwards the state points at the start
        of the next epoch. For the dev split: the whole (fixed) epoch every time, state untouched."""
        if self.split == "dev":
            return self._iterate(1, track=False)
        return self._iterate(1)

    def _iterate(self, epochs: int | None, track: bool = True):
        """`epochs` epochs (None: forever) from the current position -- from the start of epoch 0 if not
        `track` -- recording the position after every batch in the stream's state if `track`."""
        plan, done = (self.plan(), self._done) if track else (self._plan_at(0, ()), 0)
        taken = plan.slot_batches_done(self.rank, done)
        source = self._worker_batches(plan, taken, epochs)
        try:
            yield from self._in_plan_order(source, epochs, plan, done, track)
        finally:   # closing this generator (or an error in it) ends the workers now, not at garbage collection
            source.close()

    def _in_plan_order(self, source, epochs: int | None, plan: EpochPlan, done: int, track: bool):
        """The rank's batches from `source` (workers' batches in arrival order) re-sorted into plan order, with
        filler batches appended to each epoch, from position `done` of `plan` and then epoch after epoch."""
        waiting: dict[tuple[int, int, int], dict] = {}
        fill = dict(bos=self._dec.bos, eos=self._dec.eos, pad=self._dec.pad, multiple=self._dec.multiple)
        first_epoch = plan.epoch
        while True:
            order, total = plan.rank_order(self.rank), plan.batches_per_rank()
            if total == 0:
                raise DataError(f"{self.shard_dir}: epoch {plan.epoch} plans no batch at all")
            if done == 0:
                log.info("%s epoch %d%s, rank %d: %d batches + %d fillers (the longest rank has %d)", self.split,
                         plan.epoch, " (rest, re-planned on this layout)" if plan.segment else "", self.rank,
                         len(order), total - len(order), total)
            for position in range(done, total):
                if position < len(order):
                    key = (plan.epoch, *order[position])
                    while key not in waiting:   # workers' batches arrive in the DataLoader's order: re-sort
                        e, w, j, batch = next(source)
                        waiting[(e, w, j)] = batch
                    batch = waiting.pop(key)
                else:
                    batch = filler_batch(**fill)
                if track:
                    if position + 1 == total:
                        self._epoch, self._segments, self._done = plan.epoch + 1, (), 0
                    else:
                        self._done = position + 1
                yield to_tensors(batch)
            if epochs is not None and plan.epoch + 1 == first_epoch + epochs:
                return
            plan, done = self._plan_at(plan.epoch + 1, ()), 0

    def _worker_batches(self, first: EpochPlan, starts: list[int], epochs: int | None):
        """(epoch, worker, batch index, batch) from the slot runners, from plan `first` at batch `starts[w]` of
        each worker w: in this process if num_workers is 0, else from DataLoader workers that live as long as
        this iteration."""
        epochs_source = _RankEpochs(self, first, starts, epochs)
        if self.cfg.num_workers == 0:
            yield from epochs_source.slot_batches(0)
            return
        # collate_fn=_as_is keeps the numpy arrays: pickled through the worker pipe they cost far less than
        # torch's default of one shared-memory file per tensor.
        loader = torch.utils.data.DataLoader(epochs_source, batch_size=None,
                                             collate_fn=_as_is, num_workers=self.num_workers, prefetch_factor=4,
                                             worker_init_fn=functools.partial(_init_worker, os.getpid()),
                                             # workers must be children of this process (fork, as Linux has
                                             # always defaulted to; not a fork server) to watch it
                                             multiprocessing_context="fork" if sys.platform.startswith("linux")
                                             else "spawn",
                                             # its own generator: drawing the workers' base seed from the global
                                             # one would shift the model's dropout masks after a resume
                                             generator=torch.Generator().manual_seed(self.cfg.seed))
        batches = iter(loader)
        _LIVE_LOADERS.add(batches)
        try:
            for item in batches:
                if isinstance(item, _WorkerError):
                    raise DataError(item.message)
                yield item
        finally:
            _stop_workers(batches)

    # -- state ------------------------------------------------------------------------------------------------
    def _settings(self) -> dict:
        """The plan settings a state must share (everything but the layout)."""
        return {k: v for k, v in dataclasses.asdict(self.spec).items() if k not in LAYOUT}

    def state_dict(self) -> dict:
        """JSON-serialisable state: the position -- `epoch` and its layout `segments` [[world_size, num_workers,
        batches yielded per rank], ...], earlier first, the last one this stream's layout -- plus what decides
        the plan (checked on load) and, for reading, the samples read so far this epoch per stream over all
        ranks. Nothing in it is rank-specific: wherever every rank has yielded the same number of batches (an
        optimizer-step boundary) every rank's state is the same, and it may be loaded on any rank of any
        layout."""
        plan = self.plan()
        left = dict(zip(sorted(plan.reads), plan.reads_left(self._done).tolist()))
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "split": self.split, "epoch": self._epoch,
                "segments": [list(seg) for seg in self._segments] + [[self.world_size, self.num_workers,
                                                                     self._done]],
                "batches_done": self.batches_done, "batches_per_epoch": self.batches_per_epoch(),
                "index_sha256": self.index_sha256, "plan": self._settings(),
                "rng": "counter-based: every draw is seeded by (seed, [segment,] purpose, epoch, slot, counter); "
                       "nothing else to restore",
                "stream_reads_done": {name: n - left[name] for name, n in plan.reads.items()},
                "stream_reads_in_epoch": plan.reads}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (`state_dict` of any rank, on this layout or another; call it before iterating,
        a running iterator keeps its own position).

        On the layout of the state's last segment the next batch is the one an uninterrupted run would yield.
        On another world size or number of workers the rest of the epoch is re-planned on this one
        (`swcm.data.plan`): every read of the epoch's plan that no rank has yielded is read exactly once, none
        that was yielded again; later epochs are planned on this layout. DataError if the state was made with
        another shard set or other plan settings (naming them), or its position is not one of the epoch's."""
        version = state.get("version")
        if state.get("format") != STATE_FORMAT or version not in (1, STATE_VERSION):
            raise DataError(f"loader state: expected format {STATE_FORMAT!r} version 1 or {STATE_VERSION}, got "
                            f"{state.get('format')!r} version {version!r}")
        if state["index_sha256"] != self.index_sha256:
            raise DataError(f"loader state: made with another shard set (index sha256 {state['index_sha256'][:16]}"
                            f", {self.shard_dir / INDEX_NAME} has {self.index_sha256[:16]})")
        diffs = [f"{k}: state {state['plan'].get(k)!r}, now {v!r}" for k, v in self._settings().items()
                 if state["plan"].get(k) != v]
        if diffs:
            raise DataError("loader state: the plan settings changed, resume would not be exact (" +
                            "; ".join(diffs) + ")")
        if version == 1:   # from before elastic resume: one segment, its layout among the plan settings
            segments = [[state["plan"]["world_size"], state["plan"]["num_workers"], state["batches_done"]]]
        else:
            segments = state["segments"]
        if not (isinstance(segments, list) and segments and all(
                isinstance(seg, list) and len(seg) == 3 and all(type(x) is int for x in seg)
                and seg[0] >= 1 and seg[1] >= 1 and seg[2] >= 0 for seg in segments)):
            raise DataError(f"loader state: segments {segments!r}: expected [[world_size >= 1, num_workers >= 1, "
                            "batches >= 0], ...]")
        epoch = int(state["epoch"])
        earlier, done = _continue_on([tuple(seg) for seg in segments], (self.world_size, self.num_workers))
        try:
            total = self._plan_at(epoch, earlier).batches_per_rank()
        except ValueError as e:
            raise DataError(f"loader state: {e}") from None
        if done > total:
            raise DataError(f"loader state: {done} batches done of epoch {epoch}, which has {total} on "
                            f"{self.world_size} ranks x {self.num_workers} workers")
        self._epoch, self._segments, self._done = (epoch + 1, (), 0) if done == total else (epoch, earlier, done)


def _continue_on(segments: list[tuple[int, int, int]], layout: tuple[int, int]) -> tuple[tuple, int]:
    """A state's segments continued on `layout` = (world_size, num_workers): (the earlier segments, batches
    already yielded on `layout`). The last segment continues if it has this layout, else a new one starts. A
    last segment with no batch yielded is dropped first (nothing was read on it), so that a state saved before
    a layout's first batch continues the segment before it as exactly as if that layout had never run."""
    *earlier, (world, workers, done) = segments
    if done == 0 and earlier:
        *earlier, (world, workers, done) = earlier
    if (world, workers) == layout:
        return tuple(earlier), done
    return tuple(earlier) + (((world, workers, done),) if done else ()), 0


def save_state(stream: PretrainStream, path: str | Path) -> None:
    """Write the stream's state as JSON."""
    Path(path).write_text(json.dumps(stream.state_dict(), indent=1))


def load_state(stream: PretrainStream, path: str | Path) -> None:
    """Restore a state written by `save_state`."""
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read loader state ({e})") from None
    stream.load_state_dict(state)
