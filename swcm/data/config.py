"""The `data` section of a run config: where the shards are and how they are mixed, noised and batched."""

from __future__ import annotations

from dataclasses import dataclass

from swcm.config_checks import Checked, bounded


@dataclass
class DataConfig(Checked):
    shards: str = ""                 # a directory written by launch/prepare_data.py (holds index.json)
    dev_shards: str = ""             # held-out shards for the dev loss ("" = none)
    alpha: float = bounded(0.3, ge=0)             # language sampling p(lang) ∝ n_lang^alpha (XLM-R's 0.3)
    mt_ratio: float = bounded(0.1, ge=0, le=1)    # fraction of samples drawn from the MT (parallel) streams
    mask_ratio: float = bounded(0.35, ge=0, lt=1)   # mBART: 35% of tokens masked ...
    poisson_lambda: float = bounded(3.5, gt=0)      # ... in spans of Poisson(3.5) length, one <mask> per span
    permute_sentences: bool = True   # mBART sentence permutation for multi-sentence DAE inputs
    max_tokens: int = bounded(4096, ge=1)   # token budget of one micro-batch (padded source + target tokens)
    max_samples: int = bounded(64, ge=1)    # and at most this many samples in it
    pad_to_multiple: int = bounded(8, ge=1)  # tensor-core friendly sequence lengths
    shuffle_buffer: int = bounded(1000, ge=1)
    num_workers: int = bounded(1, ge=0)     # loader processes per rank (0: read in the training process)
    seed: int = bounded(1234, ge=0)
    bucket_batches: int = bounded(16, ge=1)  # length bucketing sorts windows of max_samples * this many samples:
                                             # enough to group similar lengths, small enough to keep the mix local
    shard_url_prefix: str = ""       # read shards from prefix + name (https://..., pipe:aws s3 cp s3://.../ -)
                                     # instead of beside index.json; "" = local files
