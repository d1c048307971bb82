"""Elastic resume of the pretraining stream: a state saved on one layout (world size x workers) and loaded on
another continues the epoch so that every planned read not yet consumed is read exactly once and none consumed
is read again; later epochs are planned on the new layout; the same layout resumes bit-exactly.

References, independent of the re-planning code: the reads of an uninterrupted epoch on the layout the epoch
began on (sample and MT direction, over all ranks), every stored sample once (alpha = 1 with the natural MT
share), and the per-stream read counts of the mixing formula with each sample read floor or ceil of
reads / samples times (alpha = 0.3)."""

import contextlib
import itertools
import json
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import pytest

from swcm.data.shards import DataError, load_index
from swcm.data.stream import PretrainStream
from tests.test_data_stream import (ROOT, cfg_for, expected_probabilities, natural_mt_ratio, same_batch, shards,
                                    stored)

__all__ = ["shards", "stored"]   # module fixtures shared with test_data_stream


def read_key(batch, i):
    """One read: the sample and the direction it was read in."""
    return batch["sample_id"][i], batch["src_lang"][i], batch["tgt_lang"][i]


def run_layout(cfg, tokenizer, world, workers, state, batches):
    """Every rank of `world` ranks x `workers` loader workers (0: in-process) from `state` (None: the start),
    each yielding `batches` batches (None: the rest of the current epoch). Returns (reads as (epoch, sample id,
    src_lang, tgt_lang), the batches of every rank, the state every rank ends with -- asserted identical)."""
    reads, per_rank, states = [], [], []
    for rank in range(world):
        stream = PretrainStream(replace(cfg, num_workers=workers), tokenizer, rank=rank, world_size=world)
        if state is not None:
            stream.load_state_dict(json.loads(json.dumps(state)))   # as a checkpoint stores it
        mine = []
        with contextlib.closing(stream.epoch_batches() if batches is None else iter(stream)) as it:
            while batches is None or len(mine) < batches:
                epoch = stream.epoch
                batch = next(it, None)
                if batch is None:
                    break
                mine.append(batch)
                if not batch["is_padding"]:
                    reads += [(epoch, *read_key(batch, i)) for i in range(len(batch["sample_id"]))]
        per_rank.append(mine)
        states.append(stream.state_dict())
    assert all(s == states[0] for s in states), "ranks end with different states"
    assert len({len(b) for b in per_rank}) == 1, "ranks yield different batch counts"
    return reads, per_rank, states[0]


def run_chain(cfg, tokenizer, steps, state=None):
    """Layouts one after another, each loading the state the previous one saved: steps of (world, workers,
    batches). Returns (reads, final state)."""
    reads = []
    for world, workers, batches in steps:
        got, _, state = run_layout(cfg, tokenizer, world, workers, state, batches)
        reads += got
    return reads, state


def epoch_reads(reads, epoch):
    return Counter(r[1:] for r in reads if r[0] == epoch)


def uninterrupted(cfg, tokenizer, world, workers, epochs=1):
    """Per epoch, the reads of an uninterrupted run from the start on one layout."""
    reads, state = run_chain(cfg, tokenizer, [(world, workers, None)] * epochs)
    assert state["epoch"] == epochs
    return [epoch_reads(reads, e) for e in range(epochs)]


def stream_of(sample) -> str:
    meta = sample["meta"]
    return f"mono/{meta['lang']}" if meta["task"] == "mono" else f"parallel/{meta['src_lang']}-{meta['tgt_lang']}"


def stream_of_read(read) -> str:
    """The stream of a read (epoch, sample id, src_lang, tgt_lang): MT streams are stored as x-zh."""
    _, _, a, b = read
    return f"mono/{a}" if a == b else f"parallel/{a}-{b}" if b == "zh" else f"parallel/{b}-{a}"


def assert_one_pass_of_the_mix(reads: Counter, shards, stored, alpha, mt_ratio):
    """Independent of the plan: stream s is read r_s = max(n_s, round(L w_s)) times (L = max n / w), each of
    its samples floor(r_s / n_s) or that + 1 times."""
    index = load_index(shards)
    p = expected_probabilities(index, alpha, mt_ratio)
    length = max(v["samples"] / p[s] for s, v in index["streams"].items())
    per_sample = Counter(sid for sid, _, _ in reads.elements())
    for s, info in index["streams"].items():
        n, r = info["samples"], max(info["samples"], round(length * p[s]))
        counts = Counter(per_sample[sid] for sid in stored if stream_of(stored[sid]) == s)
        assert sum(counts.values()) == n and sum(k * c for k, c in counts.items()) == r, (s, counts, r)
        assert set(counts) <= {r // n, r // n + 1}, (s, counts)


# -- the chain of the issue: world 2 -> 1 -> 3, workers 2 -> 1, mid-epoch --------------------------------------

@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_world_2_1_3_workers_2_1_reads_one_pass_of_the_plan(shards, tokenizer, stored, alpha):
    mt_ratio = natural_mt_ratio(shards) if alpha == 1.0 else 0.2
    cfg = cfg_for(shards, alpha=alpha, mt_ratio=mt_ratio)
    reference = uninterrupted(cfg, tokenizer, 2, 2)[0]
    if alpha == 1.0:   # every stored sample exactly once
        assert Counter(sid for sid, _, _ in reference.elements()) == Counter(stored.keys())
    else:
        assert_one_pass_of_the_mix(reference, shards, stored, alpha, mt_ratio)
        assert max(reference.values()) > 1   # streams repeat: "once" would be the wrong test
    reads, state = run_chain(cfg, tokenizer, [(2, 2, 23), (1, 1, 41), (3, 0, None)])
    assert state["epoch"] == 1 and state["segments"] == [[3, 1, 0]]
    assert epoch_reads(reads, 0) == reference
    assert {r[0] for r in reads} == {0}


def test_states_record_the_layout_segments(shards, tokenizer):
    cfg = cfg_for(shards)
    first, _, a = run_layout(cfg, tokenizer, 2, 2, None, 5)
    assert a["segments"] == [[2, 2, 5]] and a["batches_done"] == 5 and "rank" not in a
    second, _, b = run_layout(cfg, tokenizer, 1, 0, a, 7)
    assert b["segments"] == [[2, 2, 5], [1, 1, 7]] and b["batches_done"] == 12
    # the samples read so far per stream, over all ranks and layouts
    read = Counter(stream_of_read(r) for r in first + second)
    assert b["stream_reads_done"] == {s: read[s] for s in b["stream_reads_in_epoch"]}


# -- other chains -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [
    [(1, 2, 30), (3, 2, 9), (2, 1, None)],          # grow then shrink, workers on both sides
    [(2, 2, 10), (1, 1, 12), (2, 2, None)],         # back to the first layout after reads on another
    [(3, 1, 1), (2, 2, 1), (1, 0, 1), (2, 1, None)],  # a change after every batch
])
def test_other_chains_read_one_pass(shards, tokenizer, stored, steps):
    cfg = cfg_for(shards, alpha=0.3, mt_ratio=0.2)
    reference = uninterrupted(cfg, tokenizer, *steps[0][:2])[0]
    reads, state = run_chain(cfg, tokenizer, steps)
    assert epoch_reads(reads, 0) == reference and state["epoch"] == 1


def test_change_at_the_last_batch_of_an_epoch(shards, tokenizer):
    """One batch per rank left of a 2 x 2 epoch, continued on 3 x 2: fewer shards left than slots, so shards
    are split into parts read by several slots; still exact, and every rank yields the same count."""
    cfg = cfg_for(shards, alpha=1.0, mt_ratio=natural_mt_ratio(shards))
    first = PretrainStream(replace(cfg, num_workers=2), tokenizer, rank=0, world_size=2)
    n = first.batches_per_epoch()
    probe = PretrainStream(replace(cfg, num_workers=2), tokenizer, rank=0, world_size=3)
    probe.load_state_dict({**first.state_dict(), "segments": [[2, 2, n - 1]]})
    rest = probe.plan().units
    assert len({u.shard for u in rest}) < 6 <= len(rest)   # the split path
    reads, state = run_chain(cfg, tokenizer, [(2, 2, n - 1), (3, 2, None)])
    assert epoch_reads(reads, 0) == uninterrupted(cfg, tokenizer, 2, 2)[0] and state["epoch"] == 1


def test_change_across_an_epoch_boundary_then_epochs_on_the_new_layout(shards, tokenizer):
    """Epoch 0 on 1 rank x 2 workers, 3 batches into epoch 1, then 3 ranks x 1 worker: epochs 0 and 1 are each
    one pass of the plan they began with, and epoch 2 is batch for batch what a 3-rank run yields."""
    cfg = cfg_for(shards, alpha=0.3, mt_ratio=0.2)
    n0 = PretrainStream(replace(cfg, num_workers=2), tokenizer, rank=0, world_size=1).batches_per_epoch()
    reads, state = run_chain(cfg, tokenizer, [(1, 2, n0 + 3), (3, 1, None)])
    assert state["epoch"] == 2 and state["segments"] == [[3, 1, 0]]
    reference = uninterrupted(cfg, tokenizer, 1, 2, epochs=2)
    assert epoch_reads(reads, 0) == reference[0] and epoch_reads(reads, 1) == reference[1]
    _, after, _ = run_layout(cfg, tokenizer, 3, 1, state, 6)
    for rank in range(3):
        plain = PretrainStream(replace(cfg, num_workers=0), tokenizer, rank=rank, world_size=3)
        skip = plain.batches_per_epoch(0) + plain.batches_per_epoch(1)
        with contextlib.closing(iter(plain)) as it:
            expected = list(itertools.islice(it, skip, skip + 6))
        assert len(expected) == 6 and all(same_batch(x, y) for x, y in zip(after[rank], expected))


# -- the same layout resumes exactly, also inside a re-planned rest of an epoch --------------------------------

@pytest.mark.parametrize("first,then", [((2, 2), (1, 0)), ((1, 0), (2, 2))])
def test_same_layout_resume_inside_a_replanned_epoch_is_exact(shards, tokenizer, first, then):
    """Stop on the re-planned layout 3 batches before the epoch ends and resume on it: the next 7 batches (into
    the next epoch) are those of the uninterrupted re-planned run."""
    cfg = cfg_for(shards)
    _, _, at_change = run_layout(cfg, tokenizer, *first, None, 10)
    probe = PretrainStream(replace(cfg, num_workers=then[1]), tokenizer, rank=0, world_size=then[0])
    probe.load_state_dict(at_change)
    k = probe.batches_per_epoch() - probe.batches_done - 3
    _, straight, _ = run_layout(cfg, tokenizer, *then, at_change, k + 7)
    _, _, stopped = run_layout(cfg, tokenizer, *then, at_change, k)
    assert stopped["segments"][-1][2] == k
    _, resumed, end = run_layout(cfg, tokenizer, *then, stopped, 7)
    assert end["epoch"] == 1
    for rank, batches in enumerate(resumed):
        assert all(same_batch(x, y) for x, y in zip(batches, straight[rank][k:]))


def test_a_layout_that_read_nothing_leaves_no_trace(shards, tokenizer):
    """A state loaded on another layout and saved before its first batch, loaded back on the first layout,
    continues exactly as if the other layout had never run."""
    cfg = cfg_for(shards)
    _, _, state = run_layout(cfg, tokenizer, 2, 2, None, 8)
    _, _, untouched = run_layout(cfg, tokenizer, 3, 1, state, 0)
    assert untouched["segments"] == [[2, 2, 8], [3, 1, 0]]
    _, back, _ = run_layout(cfg, tokenizer, 2, 2, untouched, 5)
    _, straight, _ = run_layout(cfg, tokenizer, 2, 2, None, 13)
    for rank in range(2):
        assert all(same_batch(x, y) for x, y in zip(back[rank], straight[rank][8:]))


def test_a_state_from_before_elastic_resume_loads(shards, tokenizer):
    """Version 1 states (one layout, recorded among the plan settings) continue exactly."""
    cfg = cfg_for(shards)
    _, straight, state = run_layout(cfg, tokenizer, 2, 2, None, 9)
    v1 = {"format": state["format"], "version": 1, "split": "train", "epoch": 0, "batches_done": 6,
          "index_sha256": state["index_sha256"], "plan": {**state["plan"], "world_size": 2, "num_workers": 2}}
    _, resumed, _ = run_layout(cfg, tokenizer, 2, 2, v1, 3)
    for rank in range(2):
        assert all(same_batch(x, y) for x, y in zip(resumed[rank], straight[rank][6:]))


# -- refused states -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting,value", [("max_tokens", 2048), ("seed", 7), ("shuffle_buffer", 20),
                                           ("alpha", 0.5), ("bucket_batches", 8)])
def test_state_with_other_plan_settings_is_refused_naming_them(shards, tokenizer, setting, value):
    state = PretrainStream(cfg_for(shards, num_workers=0), tokenizer, rank=0, world_size=1).state_dict()
    other = PretrainStream(cfg_for(shards, num_workers=2, **{setting: value}), tokenizer, rank=1, world_size=2)
    with pytest.raises(DataError, match=f"{setting}: state .*, now {value}"):
        other.load_state_dict(state)


def test_state_from_another_shard_set_is_refused(shards, tokenizer, tmp_path):
    other_set = tmp_path / "other"
    shutil.copytree(shards, other_set)
    index = json.loads((other_set / "index.json").read_text())
    index["created"] = "another run"
    (other_set / "index.json").write_text(json.dumps(index))
    state = PretrainStream(cfg_for(other_set), tokenizer, rank=0, world_size=1).state_dict()
    with pytest.raises(DataError, match="another shard set"):
        PretrainStream(cfg_for(shards), tokenizer, rank=0, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("segments,match", [
    ([], "segments"), ([[2, 2]], "segments"), ([[0, 1, 3]], "segments"), ([[2, 2, "3"]], "segments"),
    ([[2, 2, 0], [1, 1, 4]], "segment 0 .* 0 batches done"),          # an earlier segment that read nothing
    ([[2, 2, 100000], [1, 1, 4]], "segment 0 .* 100000 batches done"),  # past the end of its plan
    ([[3, 1, 100000]], "100000 batches done of epoch 0, which has"),  # on this layout, past its end
])
def test_malformed_positions_are_refused(shards, tokenizer, segments, match):
    stream = PretrainStream(cfg_for(shards, num_workers=0), tokenizer, rank=0, world_size=3)
    state = {**stream.state_dict(), "segments": segments}
    with pytest.raises(DataError, match=match):
        stream.load_state_dict(state)
    assert stream.state_dict()["segments"] == [[3, 1, 0]]   # the position is untouched


# -- through launch/inspect_data.py, a new process per rank and layout -------------------------------------------

def inspect(shards, tokenizer, rank, world, workers, *extra):
    cmd = [sys.executable, str(ROOT / "launch" / "inspect_data.py"), str(shards), "--tokenizer",
           str(tokenizer.saved_dir), "--rank", str(rank), "--world-size", str(world), "--num-workers", str(workers),
           "--set", "data.max_tokens=1024", "--set", "data.max_samples=16", "--set", "data.shuffle_buffer=50",
           "--set", "data.alpha=1.0", "--set", f"data.mt_ratio={natural_mt_ratio(shards)!r}", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.slow
def test_inspect_data_world_2_1_3_workers_2_1_reads_every_sample_once(shards, tokenizer, stored, tmp_path):
    """The acceptance chain with inspect_data.py: 2 ranks x 2 workers for 15 batches, 1 x 1 for 20, then 3 x 1
    to the end of the epoch, each rank a process writing its state. The ranks of a layout write the same state
    and print the same batch positions, which continue where the previous layout stopped; the epoch's samples
    are the stored ones, each once."""
    seen, state, start = Counter(), None, 0
    for n, (world, workers, what) in enumerate([(2, 2, ["--batches", "15"]), (1, 1, ["--batches", "20"]),
                                                (3, 1, ["--epochs", "1"])]):
        outs = [tmp_path / f"layout{n}-rank{rank}.json" for rank in range(world)]
        positions = []
        for rank, out in enumerate(outs):
            lines = inspect(shards, tokenizer, rank, world, workers, *what, "--state-out", str(out),
                            *(["--state-in", str(state)] if state else []))
            assert {line["epoch"] for line in lines} == {0}
            seen.update(line["sample_id"] for line in lines if "sample_id" in line)
            positions.append(sorted({line["batch"] for line in lines}))
        assert len({out.read_text() for out in outs}) == 1 and all(p == positions[0] for p in positions)
        assert positions[0] == list(range(start, start + len(positions[0])))
        start += len(positions[0])
        state = outs[0]
    assert start > 35 and json.loads(state.read_text())["epoch"] == 1
    assert seen == Counter(stored.keys())
