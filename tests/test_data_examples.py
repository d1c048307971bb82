"""Fine-tuning batches (swcm/data/examples.py): one global order whatever the number of ranks, every example once
per epoch, resumable on another world size, and caps / weights per train file."""

from collections import Counter
from pathlib import Path

import pytest

from swcm.data.examples import Batching, ExampleStream, Source
from swcm.seq2seq_layout import IGNORE_INDEX
from swcm.tasks.jsonl import Example

NTREX = Path(__file__).resolve().parents[1] / "data" / "demo" / "parallel" / "ntrex128" / "ntrex128"
BATCHING = Batching(max_len=64, max_tokens=512, max_samples=8, pad_to_multiple=8, bucket_batches=4, seed=5)


def _examples(tgt: str, n: int, split: str = "train") -> list[Example]:
    zh = Path(f"{NTREX}.{split}.zh").read_text(encoding="utf-8").splitlines()
    other = Path(f"{NTREX}.{split}.{tgt}").read_text(encoding="utf-8").splitlines()
    return [Example(zh[i], other[i], "zh", tgt, i + 1) for i in range(n)]


def _read(stream: ExampleStream, batches: int) -> list[str]:
    """sample ids of the next `batches` batches (fillers contribute none)."""
    it = iter(stream)
    ids = []
    for _ in range(batches):
        b = next(it)
        ids += [] if b["is_padding"] else b["sample_id"]
    return ids


def _streams(sources, world, state=None):
    out = []
    for rank in range(world):
        s = ExampleStream(sources, TOKENIZER, BATCHING, rank=rank, world_size=world)
        if state:
            s.load_state_dict(state)
        out.append(s)
    return out


@pytest.fixture(autouse=True)
def _tok(tokenizer):
    global TOKENIZER
    TOKENIZER = tokenizer


SOURCES = [Source("bo", _examples("bo", 60)), Source("ug", _examples("ug", 25))]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_an_epoch_reads_every_example_once_on_any_world_size(world):
    streams = _streams(SOURCES, world)
    n_global = len(streams[0].batches(0))
    rounds = -(-n_global // world)
    ids = [i for s in streams for i in _read(s, rounds)]
    assert Counter(ids) == Counter(f"{s.name}:{e.line}" for s in SOURCES for e in s.examples)
    assert all(s.state_dict()["epoch"] == 1 and s.state_dict()["consumed"] == 0 for s in streams)
    # ranks agree on the plan, and the batches follow the layout (<tgt_lang> first label, scored)
    batch = next(iter(_streams(SOURCES, world)[0]))
    assert batch["labels"][:, 0].tolist() == [TOKENIZER.convert_tokens_to_ids(f"<{t}>") for t in batch["tgt_lang"]]
    assert (batch["labels"] != IGNORE_INDEX).sum() > 0


def test_resume_on_other_world_sizes_reads_the_rest_exactly_once():
    first = _streams(SOURCES, 2)
    ids = [i for s in first for i in _read(s, 3)]
    state = first[0].state_dict()
    assert state == first[1].state_dict()          # the position is global
    second = _streams(SOURCES, 1, state)
    ids += _read(second[0], 4)
    third = _streams(SOURCES, 3, second[0].state_dict())
    n_left = len(third[0].batches(0)) - third[0].state_dict()["consumed"]
    ids += [i for s in third for i in _read(s, -(-n_left // 3))]
    assert Counter(ids) == Counter(f"{s.name}:{e.line}" for s in SOURCES for e in s.examples)
    assert third[0].state_dict()["epoch"] == 1


def test_cap_keeps_the_same_few_examples_and_weight_repeats_them():
    sources = [Source("bo", _examples("bo", 60)), Source("ug", _examples("ug", 25), cap=4, weight=2.5)]
    stream = _streams(sources, 1)[0]
    per_epoch = []
    for epoch in range(3):
        reads = [read for batch in stream.batches(epoch) for read in batch]
        ug = Counter(i for s, i in reads if s == 1)
        assert sum(ug.values()) == 10 and len(ug) == 4 and max(ug.values()) == 3 and min(ug.values()) == 2
        assert Counter(i for s, i in reads if s == 0) == Counter(range(60))
        per_epoch.append(set(ug))
    assert per_epoch[0] == per_epoch[1] == per_epoch[2]


def test_state_from_other_examples_or_settings_is_refused():
    state = _streams(SOURCES, 1)[0].state_dict()
    with pytest.raises(ValueError, match="other training examples"):
        _streams([Source("bo", _examples("bo", 59)), SOURCES[1]], 1, state)
    other = ExampleStream(SOURCES, TOKENIZER, Batching(**{**BATCHING.__dict__, "max_tokens": 1024}), rank=0,
                          world_size=1)
    with pytest.raises(ValueError, match="max_tokens"):
        other.load_state_dict(state)


def test_dev_split_is_every_example_in_one_unshuffled_epoch():
    dev = ExampleStream([Source("dev", _examples("bo", 30, "dev"))], TOKENIZER, BATCHING, rank=0, world_size=1,
                        split="dev")
    first = [i for b in dev.epoch_batches() if not b["is_padding"] for i in b["sample_id"]]
    assert sorted(first) == sorted(f"dev:{i}" for i in range(1, 31)) and len(first) == 30
    assert [i for b in dev.epoch_batches() for i in b["sample_id"]] == first


def test_the_shipped_transfer_config_is_a_few_shot_mix():
    """configs/finetune/transfer_zh_to_ug.json: the paper's Table 2 set-up as a config of the same tool -- a
    high-resource file whole, plus a handful of target-language examples read several times per epoch."""
    from swcm.config import FinetuneRunConfig, load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "finetune" / "transfer_zh_to_ug.json",
                      cls=FinetuneRunConfig)
    whole, few = cfg.data.train
    assert (whole.cap, whole.weight) == (0, 1.0) and (few.cap, few.weight) == (16, 4.0)
    sources = [Source("bo", _examples("bo", 60)), Source("ug", _examples("ug", 25), cap=few.cap, weight=few.weight)]
    reads = [r for batch in _streams(sources, 1)[0].batches(0) for r in batch]
    assert sum(1 for s, _ in reads if s == 1) == 64 and len({i for s, i in reads if s == 1}) == 16
