"""The epoch plan: which samples every (rank, worker) slot reads, in which order, in which batches.

Computed identically on every rank from index.json, lengths.npz, the data config, the seed and the epoch
number alone, so that no rank needs to talk to another: every rank knows every rank's batch count and pads
its own epoch with filler batches to the longest. Every random choice draws from a generator seeded by
(seed, [segment,] purpose, epoch, slot, counter) -- a counter-based scheme, so the plan carries no RNG state
and any position in it can be regenerated exactly (that is what makes resume exact).

Steps for epoch e:
1. reads per stream from the mixing weights (`mixing.epoch_reads`);
2. per stream, passes over its shards, each pass a fresh seeded shard permutation, cut at that many reads:
   units = (shard, its first n samples);
3. units dealt, largest first (token count), to the least loaded rank and then to that rank's least loaded
   worker, ties broken by a seeded permutation; if there are fewer units than slots, the largest units are
   halved until there are enough (a logged fallback: the slots then read disjoint ranges of a shard);
4. per slot and stream, the unit samples in order, shuffled in blocks of `shuffle_buffer`;
5. per slot, the streams interleaved by a seeded shuffle of the multiset of its reads (exact counts);
6. per slot, windows of max_samples * bucket_batches samples bucketed by task/direction and length
   (`batching.cut_batches`), batch order shuffled within the window;
7. per rank, its slots' batches taken round-robin (worker 0, 1, ..., skipping finished workers).

Re-planning (an epoch resumed on another layout, i.e. another world size or number of workers). The position in
an epoch is its list of layout segments [(world_size, num_workers, batches yielded per rank), ...], earlier
first. Segment 0 is the plan above on its layout. Segment k >= 1 takes the reads of segment k-1's plan that are
in none of its ranks' first `batches` batches (`_rest_units`), groups them by shard into units
(each read keeping its sample and MT direction), and plans them by steps 3-7 over its own layout, with draws of
its own (`rng`). So the reads of an epoch are exactly segment 0's planned reads (the same multiset of samples
and directions) whatever the layouts, and segment 0's draws are those of a run that never changed layout.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from swcm.data.batching import cut_batches, round_up
from swcm.data.mixing import PARALLEL, epoch_reads, stream_weights
from swcm.seq2seq_layout import DECODER_SPECIALS, ENCODER_SPECIALS

log = logging.getLogger(__name__)

# Purpose tags mixed into every seed so that the draws for different decisions are independent (examples.py
# uses 11-14).
SHARD_ORDER, ASSIGN, BLOCK, MIX, DIRECTION, BATCH_ORDER, NOISE = range(1, 8)
RESUMED = 8   # not a purpose: the tag of a re-planned segment's draws (see rng)


def rng(seed: int, *key: int, segment: int = 0) -> np.random.Generator:
    """The generator for one decision, a pure function of the seed, the integer key (purpose first) and the
    segment. Segment 0 (an epoch as first planned) draws from (seed, *key); a re-planned segment k >= 1 from
    (seed, RESUMED, k, *key), which no segment-0 key equals, so its draws are its own."""
    tag = (RESUMED, segment) if segment else ()
    return np.random.default_rng([seed, *tag, *key])


@dataclass
class Unit:
    """Reads of one shard's samples, all by one slot: `offsets` are sample indices in the shard, in reading
    order (a range in segment 0). A re-planned segment's units carry each read's MT direction (`flips`) from
    the plan that drew it; segment 0's (None) are drawn by the slot plan."""
    shard: str
    stream: int
    offsets: np.ndarray
    tokens: int      # its batch cost in padded tokens (see _unit_tokens)
    flips: np.ndarray | None = None


@dataclass
class SlotPlan:
    """One slot's epoch: per sample (in reading order) its unit, index in that unit, stream and MT direction
    (flip = read the stored pair target -> source); batches are index arrays into those sample arrays."""
    unit: np.ndarray
    offset: np.ndarray
    stream: np.ndarray
    flip: np.ndarray
    batches: list[np.ndarray]


@dataclass
class EpochPlan:
    """One layout segment of an epoch (the whole epoch unless the layout changed in it, see the module
    docstring)."""
    epoch: int
    segment: int
    units: list[Unit]
    slots: list[SlotPlan]             # rank r, worker w -> slots[r * num_workers + w]
    num_workers: int
    reads: dict[str, int]             # samples read per stream in the whole epoch (all ranks, all segments)

    @property
    def world_size(self) -> int:
        return len(self.slots) // self.num_workers

    def rank_order(self, rank: int) -> list[tuple[int, int]]:
        """The rank's batches as (worker, batch index in that worker's slot), round-robin over workers."""
        counts = [len(self.slots[rank * self.num_workers + w].batches) for w in range(self.num_workers)]
        order = []
        for j in range(max(counts, default=0)):
            order.extend((w, j) for w in range(self.num_workers) if j < counts[w])
        return order

    def batches_per_rank(self) -> int:
        """The number of batches every rank yields in this plan (the longest rank's; others add fillers)."""
        return max(sum(len(self.slots[r * self.num_workers + w].batches) for w in range(self.num_workers))
                   for r in range(self.world_size))

    def slot_batches_done(self, rank: int, done: int) -> list[int]:
        """Per worker of `rank`, how many of its slot's batches are among the rank's first `done` batches (a
        prefix of the slot's batches: the rank takes them round-robin)."""
        taken = [0] * self.num_workers
        for w, _ in self.rank_order(rank)[:done]:
            taken[w] += 1
        return taken

    def reads_after(self, done: int) -> Iterator[tuple[SlotPlan, np.ndarray]]:
        """Per slot with reads left (in slot order), the slot and the indices of its reads in none of the ranks'
        first `done` batches, in the order of the slot's batches."""
        for rank in range(self.world_size):
            for w, taken in enumerate(self.slot_batches_done(rank, done)):
                sp = self.slots[rank * self.num_workers + w]
                if taken < len(sp.batches):
                    yield sp, np.concatenate(sp.batches[taken:])

    def reads_left(self, done: int) -> np.ndarray:
        """Per stream (in name order), how many reads are in none of the ranks' first `done` batches."""
        left = np.zeros(len(self.reads), dtype=np.int64)
        for sp, rest in self.reads_after(done):
            left += np.bincount(sp.stream[rest], minlength=len(left))
        return left


@dataclass
class PlanSpec:
    """Everything besides the epoch that decides a plan (part of the loader state, checked on resume)."""
    seed: int
    alpha: float
    mt_ratio: float
    natural: bool            # read every sample exactly once, ignoring alpha / mt_ratio (the dev split)
    world_size: int
    num_workers: int
    shuffle_buffer: int
    max_tokens: int
    max_samples: int
    pad_to_multiple: int
    bucket_batches: int


def build_plan(spec: PlanSpec, epoch: int, streams: dict[str, dict], lengths: dict[str, np.ndarray],
               segments: tuple[tuple[int, int, int], ...] = ()) -> EpochPlan:
    """The plan of `epoch` for every slot of spec's layout (see the module docstring for the steps).

    `segments`: the layout segments (world_size, num_workers, batches yielded per rank) the epoch already ran,
    earlier first; the plan is then the re-planned rest of the epoch (segment len(segments)). ValueError if a
    segment's batch count is not in [1, its plan's batches per rank - 1] (the epoch would have ended)."""
    names = sorted(streams)
    sizes = {s: streams[s]["samples"] for s in names}
    if spec.natural:
        reads = dict(sizes)
    else:
        weights = stream_weights(sizes, {s: streams[s]["task"] for s in names}, spec.alpha, spec.mt_ratio)
        reads = epoch_reads(sizes, weights)
    parallel = np.array([streams[s]["task"] == PARALLEL for s in names])
    layouts = [replace(spec, world_size=world, num_workers=workers) for world, workers, _ in segments] + [spec]
    plan = _plan(layouts[0], epoch, 0, _units(spec, epoch, names, streams, lengths, reads), parallel, lengths,
                 reads)
    for k, (world, workers, done) in enumerate(segments, start=1):
        if not 0 < done < plan.batches_per_rank():
            raise ValueError(f"epoch {epoch} segment {k - 1} ({world} ranks x {workers} workers): {done} batches "
                             f"done, expected 1 to {plan.batches_per_rank() - 1}")
        plan = _plan(layouts[k], epoch, k, _rest_units(plan, done, lengths, spec.pad_to_multiple), parallel, lengths,
                     reads)
    return plan


def _plan(spec: PlanSpec, epoch: int, segment: int, units: list[Unit], parallel: np.ndarray, lengths,
          reads: dict[str, int]) -> EpochPlan:
    """Steps 3-6 for `units` over spec's layout: the plan of one segment of the epoch."""
    num_slots = spec.world_size * spec.num_workers
    if len(units) < num_slots:
        if segment == 0:
            log.warning("only %d shard reads for %d (rank, worker) slots: splitting shards into sample ranges so "
                        "that every slot reads (more shards than ranks x workers avoid this)", len(units), num_slots)
        units = _split_units(units, num_slots, lengths, spec.pad_to_multiple)
    per_slot = _assign(spec, epoch, segment, units, num_slots)
    slots = [_slot_plan(spec, epoch, segment, slot, [units[u] for u in per_slot[slot]], per_slot[slot], parallel,
                        lengths) for slot in range(num_slots)]
    return EpochPlan(epoch, segment, units, slots, spec.num_workers, reads)


def _rest_units(plan: EpochPlan, done: int, lengths, multiple: int) -> list[Unit]:
    """The reads of `plan` in none of its ranks' first `done` batches, as one unit per shard (shards in name
    order; each unit's reads in slot order, then in the order of the slot's batches), MT directions kept.
    Reads of a shard by several slots (or passes) become one unit: one slot loads the shard."""
    parts: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for sp, rest in plan.reads_after(done):
        for uid in np.unique(sp.unit[rest]).tolist():
            mine = rest[sp.unit[rest] == uid]
            unit = plan.units[uid]
            parts.setdefault(unit.shard, []).append((unit.stream, sp.offset[mine], sp.flip[mine]))
    units = []
    for shard in sorted(parts):
        offsets = np.concatenate([o for _, o, _ in parts[shard]])
        units.append(Unit(shard, parts[shard][0][0], offsets, _unit_tokens(shard, offsets, lengths, multiple),
                          np.concatenate([f for _, _, f in parts[shard]])))
    return units


def _unit_tokens(shard: str, offsets: np.ndarray, lengths: dict[str, np.ndarray], multiple: int) -> int:
    """The batch cost of reading these samples: encoder + decoder lengths with their special tokens, each
    padded to `multiple` (what a sample costs in a batch; raw token counts undercount streams of short
    samples)."""
    n = lengths[shard][offsets]
    src, tgt = (n, n) if n.ndim == 1 else (n[:, 0], n[:, 1])
    return int(round_up(src + ENCODER_SPECIALS, multiple).sum() + round_up(tgt + DECODER_SPECIALS, multiple).sum())


def _units(spec, epoch, names, streams, lengths, reads) -> list[Unit]:
    units = []
    for i, s in enumerate(names):
        shards = streams[s]["shards"]
        need, p = reads[s], 0
        while need > 0:
            for k in rng(spec.seed, SHARD_ORDER, epoch, i, p).permutation(len(shards)):
                offsets = np.arange(min(need, len(lengths[shards[k]])))
                units.append(Unit(shards[k], i, offsets, _unit_tokens(shards[k], offsets, lengths,
                                                                      spec.pad_to_multiple)))
                need -= len(offsets)
                if need == 0:
                    break
            p += 1
    return units


def _split_units(units: list[Unit], target: int, lengths, multiple: int) -> list[Unit]:
    """Halve the largest units (by reads) until there are `target` of them (or every unit is a single read)."""
    units = list(units)
    while len(units) < target:
        big = max(range(len(units)), key=lambda i: (len(units[i].offsets), -i))
        u = units[big]
        if len(u.offsets) < 2:
            break
        units[big:big + 1] = [_part(u, h, lengths, multiple) for h in (slice(None, len(u.offsets) // 2),
                                                                        slice(len(u.offsets) // 2, None))]
    return units


def _part(u: Unit, part: slice, lengths, multiple: int) -> Unit:
    """The unit of `part` of u's reads."""
    offsets = u.offsets[part]
    return Unit(u.shard, u.stream, offsets, _unit_tokens(u.shard, offsets, lengths, multiple),
                None if u.flips is None else u.flips[part])


def _deal(unit_ids: list[int], units: list[Unit], bins: int) -> list[list[int]]:
    """Longest-processing-time dealing: each unit (in the given order) to the bin with the fewest tokens."""
    heap = [(0, b) for b in range(bins)]
    out: list[list[int]] = [[] for _ in range(bins)]
    for u in unit_ids:
        load, b = heapq.heappop(heap)
        out[b].append(u)
        heapq.heappush(heap, (load + units[u].tokens, b))
    return out


def _assign(spec, epoch, segment, units, num_slots) -> list[list[int]]:
    """Units per slot: dealt to ranks first (rank totals decide the filler batches), then to each rank's
    workers; largest units first, ties in a seeded order; each slot then reads its units in that seeded order."""
    tiebreak = rng(spec.seed, ASSIGN, epoch, segment=segment).permutation(len(units))
    order = sorted(range(len(units)), key=lambda u: (-units[u].tokens, tiebreak[u]))
    per_slot = []
    for rank_units in _deal(order, units, spec.world_size):
        per_slot.extend(_deal(rank_units, units, spec.num_workers))
    for slot in per_slot:
        slot.sort(key=lambda u: tiebreak[u])
    return per_slot


def _slot_plan(spec, epoch, segment, slot, units, unit_ids, parallel, lengths) -> SlotPlan:
    n_streams = len(parallel)
    refs_unit, refs_offset, refs_flip = [], [], []
    for s in range(n_streams):
        mine = [(uid, u) for uid, u in zip(unit_ids, units) if u.stream == s]
        if not mine:
            refs_unit.append(np.zeros(0, dtype=np.int64))
            refs_offset.append(np.zeros(0, dtype=np.int64))
            refs_flip.append(np.zeros(0, dtype=bool))
            continue
        unit_col = np.concatenate([np.full(len(u.offsets), uid) for uid, u in mine])
        offset_col = np.concatenate([u.offsets for _, u in mine])
        # segment 0's units carry no directions (placeholders here; drawn below)
        flip_col = np.concatenate([np.zeros(len(u.offsets), dtype=bool) if u.flips is None else u.flips
                                   for _, u in mine])
        block = max(1, spec.shuffle_buffer)
        perm = np.concatenate([b + rng(spec.seed, BLOCK, epoch, slot, s, b // block, segment=segment)
                               .permutation(min(block, len(unit_col) - b)) for b in range(0, len(unit_col), block)])
        refs_unit.append(unit_col[perm])
        refs_offset.append(offset_col[perm])
        refs_flip.append(flip_col[perm])
    counts = np.array([len(r) for r in refs_unit])
    labels = np.repeat(np.arange(n_streams), counts)
    rng(spec.seed, MIX, epoch, slot, segment=segment).shuffle(labels)
    # The k-th draw of stream s in the shuffled schedule reads that stream's k-th reference.
    where = np.argsort(labels, kind="stable")
    unit = np.empty(len(labels), dtype=np.int64)
    offset = np.empty(len(labels), dtype=np.int64)
    flip = np.zeros(len(labels), dtype=bool)
    if len(labels):
        unit[where] = np.concatenate(refs_unit)
        offset[where] = np.concatenate(refs_offset)
        flip[where] = np.concatenate(refs_flip)
    is_parallel = parallel[labels] if len(labels) else np.zeros(0, dtype=bool)
    if segment == 0:   # a re-planned segment keeps the directions its reads were first planned with
        flip = (rng(spec.seed, DIRECTION, epoch, slot).random(len(labels)) < 0.5) & is_parallel
    unit_shards = {uid: u.shard for uid, u in zip(unit_ids, units)}
    enc_len = np.empty(len(labels), dtype=np.int64)
    dec_len = np.empty(len(labels), dtype=np.int64)
    for uid in unit_ids:
        sel = unit == uid
        lens = lengths[unit_shards[uid]][offset[sel]]
        if lens.ndim == 1:
            src, tgt = lens, lens
        else:
            f = flip[sel]
            src, tgt = np.where(f, lens[:, 1], lens[:, 0]), np.where(f, lens[:, 0], lens[:, 1])
        enc_len[sel] = src + ENCODER_SPECIALS
        dec_len[sel] = tgt + DECODER_SPECIALS
    shape = is_parallel.astype(np.int64) + flip   # 0 DAE, 1 MT as stored, 2 MT reversed: like-shaped batches
    window = spec.max_samples * spec.bucket_batches
    batches = []
    for w, a in enumerate(range(0, len(labels), window)):
        cut = cut_batches(enc_len[a:a + window], dec_len[a:a + window], shape[a:a + window], spec.max_tokens,
                          spec.max_samples, spec.pad_to_multiple)
        order = rng(spec.seed, BATCH_ORDER, epoch, slot, w, segment=segment).permutation(len(cut))
        batches.extend(cut[i] + a for i in order)
    return SlotPlan(unit, offset, labels, flip, batches)
