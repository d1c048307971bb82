"""A shard set of 2,000+ small shards (what many datatrove tasks over a large corpus write): index and lengths load,
the epoch plan is built in seconds, an epoch over 2 ranks reads every sample once, and a resume continues with
exactly the batches an uninterrupted stream gives."""

import json
import time

import pytest
from helpers_data import head_lines

from swcm.data.config import DataConfig
from swcm.data.prepare import prepare
from swcm.data.shards import check_shards, load_index
from swcm.data.stream import PretrainStream

from test_data_stream import DEMO, same_batch

pytestmark = pytest.mark.slow   # 2,000 shards written, then two epochs and a resume read through them

PLAN_SECONDS_MAX = 20   # measured 0.4-1.5 s on the loaded 2-core test machine: 20 s catches a quadratic plan, not noise


@pytest.fixture(scope="module")
def many(tokenizer, tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    zh = head_lines(DEMO / "mono/zh.txt", raw / "zh.txt", 1_100)
    kk = head_lines(DEMO / "mono/kk.txt", raw / "kk.txt", 1_000)
    out = tmp_path_factory.mktemp("many") / "train"
    # one sample per shard, over 3 tasks: the per-task shard names of a large run
    prepare(tokenizer.saved_dir, out, mono=[("zh", zh), ("kk", kk)], samples_per_shard=1, tasks=3,
            show_progress=False)
    return out


def _cfg(out, **kw) -> DataConfig:
    return DataConfig(shards=str(out), max_tokens=2048, max_samples=32, shuffle_buffer=64, alpha=1.0, mt_ratio=0.0,
                      num_workers=0, **kw)


def test_many_shards_load_plan_cover_and_resume(many, tokenizer, capsys):
    start = time.perf_counter()
    index = check_shards(many, tokenizer)
    stream = PretrainStream(_cfg(many), tokenizer, rank=0, world_size=2)
    n = stream.batches_per_epoch()
    plan_s = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n{len(index['shards'])} shards: index + lengths + epoch plan in {plan_s:.2f} s (loaded machine)")
    assert len(index["shards"]) >= 2_000 and plan_s < PLAN_SECONDS_MAX
    seen = []
    for rank in range(2):
        for b in PretrainStream(_cfg(many), tokenizer, rank=rank, world_size=2).epoch_batches():
            seen += [] if b["is_padding"] else b["sample_id"]
    assert len(seen) == len(set(seen)) == index["totals"]["all"]["samples"] == len(load_index(many)["shards"])
    k = n // 2
    reference = [x for _, x in zip(range(k + 5), PretrainStream(_cfg(many), tokenizer, rank=0, world_size=2))]
    first = PretrainStream(_cfg(many), tokenizer, rank=0, world_size=2)
    for _ in zip(range(k), first):
        pass
    resumed = PretrainStream(_cfg(many), tokenizer, rank=0, world_size=2)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert all(same_batch(x, y) for x, y in zip([x for _, x in zip(range(5), resumed)], reference[k:]))
