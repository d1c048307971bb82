"""The epoch plan: which samples every (rank, worker) slot reads, in which order, in which batches.

Computed identically on every rank from index.json, lengths.npz, the data config, the seed and the epoch
number alone, so that no rank needs to talk to another: every rank knows every rank's batch count and pads
its own epoch with filler batches to the longest. Every random choice draws from a generator seeded by
(seed, purpose, epoch, slot, counter) -- a counter-based scheme, so the plan carries no RNG state and any
position in it can be regenerated exactly (that is what makes resume exact).

Steps for epoch e:
1. reads per stream from the mixing weights (`mixing.epoch_reads`);
2. per stream, passes over its shards, each pass a fresh seeded shard permutation, cut at that many reads:
   units = (shard, first sample, end sample);
3. units dealt, largest first (token count), to the least loaded rank and then to that rank's least loaded
   worker, ties broken by a seeded permutation; if there are fewer units than slots, the largest units are
   halved until there are enough (a logged fallback: the slots then read disjoint ranges of a shard);
4. per slot and stream, the unit samples in order, shuffled in blocks of `shuffle_buffer`;
5. per slot, the streams interleaved by a seeded shuffle of the multiset of its reads (exact counts);
6. per slot, windows of max_samples * bucket_batches samples bucketed by task/direction and length
   (`batching.cut_batches`), batch order shuffled within the window;
7. per rank, its slots' batches taken round-robin (worker 0, 1, ..., skipping finished workers).
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass

import numpy as np

from swcm.data.batching import cut_batches, round_up
from swcm.data.mixing import PARALLEL, epoch_reads, stream_weights
from swcm.seq2seq_layout import DECODER_SPECIALS, ENCODER_SPECIALS

log = logging.getLogger(__name__)

# Purpose tags mixed into every seed so that the draws for different decisions are independent.
SHARD_ORDER, ASSIGN, BLOCK, MIX, DIRECTION, BATCH_ORDER, NOISE = range(1, 8)


def rng(seed: int, *key: int) -> np.random.Generator:
    """The generator for one decision, a pure function of the seed and the integer key."""
    return np.random.default_rng([seed, *key])


@dataclass
class Unit:
    """A contiguous range [start, stop) of one shard's samples, read by one slot."""
    shard: str
    stream: int
    start: int
    stop: int
    tokens: int      # its batch cost in padded tokens (see _unit_tokens)


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
    epoch: int
    units: list[Unit]
    slots: list[SlotPlan]             # rank r, worker w -> slots[r * num_workers + w]
    num_workers: int
    reads: dict[str, int]             # samples read per stream this epoch (all ranks)

    def rank_order(self, rank: int) -> list[tuple[int, int]]:
        """The rank's batches as (worker, batch index in that worker's slot), round-robin over workers."""
        counts = [len(self.slots[rank * self.num_workers + w].batches) for w in range(self.num_workers)]
        order = []
        for j in range(max(counts, default=0)):
            order.extend((w, j) for w in range(self.num_workers) if j < counts[w])
        return order

    def batches_per_rank(self) -> int:
        """The number of batches every rank yields this epoch (the longest rank's; others add fillers)."""
        world = len(self.slots) // self.num_workers
        return max(sum(len(self.slots[r * self.num_workers + w].batches) for w in range(self.num_workers))
                   for r in range(world))


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


def build_plan(spec: PlanSpec, epoch: int, streams: dict[str, dict], lengths: dict[str, np.ndarray]) -> EpochPlan:
    """The plan of `epoch` for every slot (see the module docstring for the steps)."""
    names = sorted(streams)
    sizes = {s: streams[s]["samples"] for s in names}
    if spec.natural:
        reads = dict(sizes)
    else:
        weights = stream_weights(sizes, {s: streams[s]["task"] for s in names}, spec.alpha, spec.mt_ratio)
        reads = epoch_reads(sizes, weights)
    units = _units(spec, epoch, names, streams, lengths, reads)
    num_slots = spec.world_size * spec.num_workers
    if len(units) < num_slots:
        log.warning("only %d shard reads for %d (rank, worker) slots: splitting shards into sample ranges so that "
                    "every slot reads (more shards than ranks x workers avoid this)", len(units), num_slots)
        units = _split_units(units, num_slots, lengths, spec.pad_to_multiple)
    per_slot = _assign(spec, epoch, units, num_slots)
    parallel = np.array([streams[s]["task"] == PARALLEL for s in names])
    slots = [_slot_plan(spec, epoch, slot, [units[u] for u in per_slot[slot]], per_slot[slot], len(names),
                        parallel, lengths) for slot in range(num_slots)]
    return EpochPlan(epoch, units, slots, spec.num_workers, reads)


def _unit_tokens(shard: str, start: int, stop: int, lengths: dict[str, np.ndarray], multiple: int) -> int:
    """The unit's batch cost: encoder + decoder lengths with their special tokens, each padded to `multiple`
    (what a sample costs in a batch; raw token counts undercount streams of short samples)."""
    n = lengths[shard][start:stop]
    src, tgt = (n, n) if n.ndim == 1 else (n[:, 0], n[:, 1])
    return int(round_up(src + ENCODER_SPECIALS, multiple).sum() + round_up(tgt + DECODER_SPECIALS, multiple).sum())


def _units(spec, epoch, names, streams, lengths, reads) -> list[Unit]:
    units = []
    for i, s in enumerate(names):
        shards = streams[s]["shards"]
        need, p = reads[s], 0
        while need > 0:
            for k in rng(spec.seed, SHARD_ORDER, epoch, i, p).permutation(len(shards)):
                take = min(need, len(lengths[shards[k]]))
                cost = _unit_tokens(shards[k], 0, take, lengths, spec.pad_to_multiple)
                units.append(Unit(shards[k], i, 0, take, cost))
                need -= take
                if need == 0:
                    break
            p += 1
    return units


def _split_units(units: list[Unit], target: int, lengths, multiple: int) -> list[Unit]:
    """Halve the largest units until there are `target` of them (or every unit is a single sample)."""
    units = list(units)
    while len(units) < target:
        big = max(range(len(units)), key=lambda i: (units[i].stop - units[i].start, -i))
        u = units[big]
        if u.stop - u.start < 2:
            break
        mid = (u.start + u.stop) // 2
        units[big:big + 1] = [Unit(u.shard, u.stream, a, b, _unit_tokens(u.shard, a, b, lengths, multiple))
                              for a, b in ((u.start, mid), (mid, u.stop))]
    return units


def _deal(unit_ids: list[int], units: list[Unit], bins: int) -> list[list[int]]:
    """Longest-processing-time dealing: each unit (in the given order) to the bin with the fewest tokens."""
    heap = [(0, b) for b in range(bins)]
    out: list[list[int]] = [[] for _ in range(bins)]
    for u in unit_ids:
        load, b = heapq.heappop(heap)
        out[b].append(u)
        heapq.heappush(heap, (load + units[u].tokens, b))
    return out


def _assign(spec, epoch, units, num_slots) -> list[list[int]]:
    """Units per slot: dealt to ranks first (rank totals decide the filler batches), then to each rank's
    workers; largest units first, ties in a seeded order; each slot then reads its units in that seeded order."""
    tiebreak = rng(spec.seed, ASSIGN, epoch).permutation(len(units))
    order = sorted(range(len(units)), key=lambda u: (-units[u].tokens, tiebreak[u]))
    per_slot = []
    for rank_units in _deal(order, units, spec.world_size):
        per_slot.extend(_deal(rank_units, units, spec.num_workers))
    for slot in per_slot:
        slot.sort(key=lambda u: tiebreak[u])
    return per_slot


def _slot_plan(spec, epoch, slot, units, unit_ids, n_streams, parallel, lengths) -> SlotPlan:
    refs_unit, refs_offset = [], []
    for s in range(n_streams):
        mine = [(uid, u) for uid, u in zip(unit_ids, units) if u.stream == s]
        if not mine:
            refs_unit.append(np.zeros(0, dtype=np.int64))
            refs_offset.append(np.zeros(0, dtype=np.int64))
            continue
        unit_col = np.concatenate([np.full(u.stop - u.start, uid) for uid, u in mine])
        offset_col = np.concatenate([np.arange(u.start, u.stop) for _, u in mine])
        block = max(1, spec.shuffle_buffer)
        perm = np.concatenate([b + rng(spec.seed, BLOCK, epoch, slot, s, b // block).permutation(
            min(block, len(unit_col) - b)) for b in range(0, len(unit_col), block)])
        refs_unit.append(unit_col[perm])
        refs_offset.append(offset_col[perm])
    counts = np.array([len(r) for r in refs_unit])
    labels = np.repeat(np.arange(n_streams), counts)
    rng(spec.seed, MIX, epoch, slot).shuffle(labels)
    # The k-th draw of stream s in the shuffled schedule reads that stream's k-th reference.
    where = np.argsort(labels, kind="stable")
    unit = np.empty(len(labels), dtype=np.int64)
    offset = np.empty(len(labels), dtype=np.int64)
    unit[where] = np.concatenate(refs_unit) if len(labels) else unit
    offset[where] = np.concatenate(refs_offset) if len(labels) else offset
    is_parallel = parallel[labels] if len(labels) else np.zeros(0, dtype=bool)
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
        batches.extend(cut[i] + a for i in rng(spec.seed, BATCH_ORDER, epoch, slot, w).permutation(len(cut)))
    return SlotPlan(unit, offset, labels, flip, batches)
