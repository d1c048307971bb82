"""The ablation config (`configs/ablations/mini.json`, `smoke.json`): corpus cuts, the encoder, the pretraining and
fine-tuning budgets every row shares, the scoring, and the rows.

Loaded with `swcm.config.load_config(path, overrides, cls=AblationConfig)`: unknown keys, wrong types and values out
of range are errors naming the file and key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from swcm.config_checks import Checked, ConfigError, bounded


@dataclass
class CorpusConfig(Checked):
    """The shipped demo corpus (data/demo): monolingual bo/kk/ug/zh/mn, NTREX-128 zh-x pairs."""
    max_lines: int = bounded(0, ge=0)          # first N lines of every text file (0 = all)
    dev_examples: int = bounded(0, ge=0)       # NTREX dev pairs scored per language (0 = all 259)
    max_len: int = bounded(128, ge=8)          # tokens per sample (prepare_data --max-len, fine-tuning data.max_len)
    vocab_size: int = bounded(8000, ge=100)    # sentencepiece pieces of the tokenizer trained on the corpus
    tokenizer_sentences: int = bounded(50_000, ge=100)   # lines sentencepiece samples


@dataclass
class EncoderConfig(Checked):
    """The XLM-R encoder pretrained from scratch with masked LM, which every row starts from."""
    hidden_size: int = bounded(256, ge=8)
    num_hidden_layers: int = bounded(6, ge=1)
    num_attention_heads: int = bounded(4, ge=1)
    intermediate_size: int = bounded(1024, ge=1)
    max_steps: int = bounded(1000, ge=1)
    lr: float = bounded(5e-4, gt=0)
    max_tokens: int = bounded(4096, ge=64)    # encoder tokens per micro-batch
    micro_batch_size: int = bounded(64, ge=1)
    ranks: int = bounded(2, ge=1)


@dataclass
class StageConfig(Checked):
    """The budget of one seq2seq stage, the same for every row."""
    max_steps: int = bounded(300, ge=1)
    lr: float = bounded(5e-4, gt=0)
    warmup_ratio: float = bounded(0.1, ge=0, le=1)
    max_tokens: int = bounded(4096, ge=64)    # padded source + target tokens per micro-batch
    micro_batch_size: int = bounded(32, ge=1)
    ranks: int = bounded(1, ge=1)


@dataclass
class PretrainConfig(StageConfig):
    mt_ratio: float = bounded(0.2, ge=0, le=1)   # share of MT samples for the rows pretrained on DAE + MT


@dataclass
class EvalConfig(Checked):
    beam: int = bounded(4, ge=1)
    max_new_tokens: int = bounded(64, ge=1)
    batch_size: int = bounded(32, ge=1)


@dataclass
class RowConfig(Checked):
    """One row of the table: a model family, its decoder, its pretraining objectives, its number of seeds."""
    id: str = ""                       # directory name under rows/ (letters, digits, -)
    name: str = ""                     # as the table shows it
    what: str = ""                     # one line on what the row is
    model: Literal["swcm", "hf-warm-start"] = "swcm"
    normal_layer_every: int = bounded(3, ge=0)                            # X (swcm)
    decoder_init: Literal["encoder", "random", "duplicate"] = "encoder"   # swcm
    objectives: Literal["dae+mt", "dae", "mt", "none"] = "dae+mt"         # seq2seq pretraining ("none": none)
    seeds: int = bounded(1, ge=1)      # seeds 1..n (pretraining and fine-tuning data order, random init)


@dataclass
class AblationConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: StageConfig = field(default_factory=StageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rows: list[RowConfig] = field(default_factory=list)
    baseline: str = "swcm"            # the row id every other row is compared with (paired bootstrap)
    cores: int = 2                    # CPU cores: stages run side by side while their ranks fit (a rank each)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def baseline_row(self) -> RowConfig:
        return next(r for r in self.rows if r.id == self.baseline)

    def check(self) -> None:
        """ConfigError for rows that cannot form one table."""
        ids = [r.id for r in self.rows]
        if not ids:
            raise ConfigError("rows: no rows")
        for i, r in enumerate(self.rows):
            if not r.id or not all(c.isalnum() or c == "-" for c in r.id):
                raise ConfigError(f"rows[{i}].id: {r.id!r}: expected letters, digits and '-'")
            if not r.name:
                raise ConfigError(f"rows[{i}].name: empty")
            if r.model == "swcm" and r.objectives == "none":
                raise ConfigError(f"rows[{i}].objectives: an SWCM row is always pretrained (dae+mt, dae or mt)")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"rows: ids repeat ({', '.join(sorted(i for i in ids if ids.count(i) > 1))})")
        if self.baseline not in ids:
            raise ConfigError(f"baseline: {self.baseline!r} is not a row id ({', '.join(ids)})")
        if self.cores < 1:
            raise ConfigError(f"cores: expected at least 1, got {self.cores}")
        if self.encoder.hidden_size % self.encoder.num_attention_heads:
            raise ConfigError("encoder.hidden_size: not a multiple of encoder.num_attention_heads")
        for key, ranks in (("encoder", self.encoder.ranks), ("pretrain", self.pretrain.ranks),
                           ("finetune", self.finetune.ranks)):
            if ranks > self.cores:
                raise ConfigError(f"{key}.ranks {ranks}: more than cores {self.cores}")
