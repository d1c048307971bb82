"""The `data` section of a run config: where the shards are and how they are mixed, noised and batched."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    shards: str = ""                 # a directory written by launch/prepare_data.py (holds index.json)
    dev_shards: str = ""             # held-out shards for the dev loss ("" = none)
    alpha: float = 0.3               # language sampling p(lang) ∝ n_lang^alpha (XLM-R's 0.3)
    mt_ratio: float = 0.1            # fraction of samples drawn from the MT (parallel) streams
    mask_ratio: float = 0.35         # mBART: 35% of tokens masked ...
    poisson_lambda: float = 3.5      # ... in spans of Poisson(3.5) length, one <mask> per span
    permute_sentences: bool = True   # mBART sentence permutation for multi-sentence DAE inputs
    max_tokens: int = 4096           # token budget of one micro-batch (padded source + target tokens)
    max_samples: int = 64            # and at most this many samples in it
    pad_to_multiple: int = 8         # tensor-core friendly sequence lengths
    shuffle_buffer: int = 1000
    num_workers: int = 1
    seed: int = 1234
    bucket_batches: int = 16         # length bucketing sorts windows of max_samples * this many samples: enough
                                     # to group similar lengths, small enough to keep the language mix local
    shard_url_prefix: str = ""       # read shards from prefix + name (https://..., pipe:aws s3 cp s3://.../ -)
                                     # instead of beside index.json; "" = local files
