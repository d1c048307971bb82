"""Masked-language-model pretraining of an XLM-R encoder on the trainer (`launch/pretrain_encoder.py`).

The encoder trains on the same shards as SWCM pretraining: the monolingual (DAE) streams read clean
(`<s> <lang> x </s>`, no span noise, no sentence permutation, no MT), corrupted the BERT / XLM-R way by
`swcm.data.mlm`. Either from scratch -- a random XLM-R of the configured shape over a tokenizer trained on the
corpus (`launch/make_tokenizer.py`) -- or continued from a Hugging Face XLM-R / CINO directory, whose tokenizer
gets the language tags the shards use (new embedding rows start at the mean of the others, as in
`convert_checkpoint.py from-encoder`). `convert_checkpoint.py to-hf` turns the run into an XLM-R directory
(`swcm.convert.encoder_to_hf`), which `from-encoder` accepts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import XLMRobertaForMaskedLM

from swcm.config import TrainConfig
from swcm.config_checks import Checked, ConfigError, bounded
from swcm.convert.staging import staged_directory
from swcm.data.config import DataConfig
from swcm.hf_dir import not_an_encoder
from swcm.seq2seq_layout import IGNORE_INDEX
from swcm.tokenization import DEFAULT_LANG_CODES, add_language_tags
from swcm.training.task import Task

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ config


@dataclass
class MLMModelConfig(Checked):
    path: str = ""              # continue from this HF XLM-R / CINO directory ("" = from scratch)
    tokenizer: str = ""         # from scratch: a tokenizer directory with the language tags (launch/make_tokenizer.py)
    lang_codes: list[str] = field(default_factory=lambda: list(DEFAULT_LANG_CODES))   # tags added to `path`'s tokenizer
    # The shape of a model built from scratch (ignored when continuing from `path`):
    hidden_size: int = bounded(256, ge=8)
    num_hidden_layers: int = bounded(4, ge=1)
    num_attention_heads: int = bounded(4, ge=1)
    intermediate_size: int = bounded(1024, ge=1)
    max_position_embeddings: int = bounded(514, ge=8)   # 512 positions + XLM-R's padding offset of 2
    dropout: float = bounded(0.1, ge=0, lt=1)          # hidden and attention dropout
    init_seed: int = bounded(0, ge=0)                   # seed of the random initial weights (and of a missing MLM head)
    attn_implementation: Literal["eager", "sdpa"] = "sdpa"
    gradient_checkpointing: bool = False


@dataclass
class MLMDataConfig(Checked):
    shards: str = ""                 # a directory written by launch/prepare_data.py; its mono streams are read
    dev_shards: str = ""             # held-out shards for the dev loss ("" = none)
    alpha: float = bounded(0.3, ge=0)             # language sampling p(lang) ∝ n_lang^alpha
    mlm_probability: float = bounded(0.15, gt=0, lt=1)   # BERT: 15% of the ordinary tokens are scored ...
    mask_fraction: float = bounded(0.8, ge=0, le=1)      # ... 80% of them become <mask> ...
    random_fraction: float = bounded(0.1, ge=0, le=1)    # ... 10% a random token, the rest stay
    max_tokens: int = bounded(4096, ge=1)   # about this many encoder tokens (padded) per micro-batch
    max_samples: int = bounded(64, ge=1)
    pad_to_multiple: int = bounded(8, ge=1)
    shuffle_buffer: int = bounded(1000, ge=1)
    num_workers: int = bounded(1, ge=0)
    seed: int = bounded(1234, ge=0)         # shard order, shuffling and the masks
    bucket_batches: int = bounded(16, ge=1)
    shard_url_prefix: str = ""

    def stream_config(self) -> DataConfig:
        """The pretraining stream's settings that read clean monolingual samples. Its token budget counts the clean
        target copy each sample carries as well (about as long as the input), hence twice `max_tokens`."""
        return DataConfig(shards=self.shards, dev_shards=self.dev_shards, alpha=self.alpha, mt_ratio=0.0,
                          mask_ratio=0.0, permute_sentences=False, max_tokens=2 * self.max_tokens,
                          max_samples=self.max_samples, pad_to_multiple=self.pad_to_multiple,
                          shuffle_buffer=self.shuffle_buffer, num_workers=self.num_workers, seed=self.seed,
                          bucket_batches=self.bucket_batches, shard_url_prefix=self.shard_url_prefix)


@dataclass
class MLMRunConfig:
    model: MLMModelConfig = field(default_factory=MLMModelConfig)
    data: MLMDataConfig = field(default_factory=MLMDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------------- model


@dataclass
class MLMLoss:
    loss: torch.Tensor           # scored-token loss sum / num_items_in_batch (their mean without it)
    token_losses: torch.Tensor   # (B, T) fp32, detached, 0 where the label is IGNORE_INDEX


class XLMRobertaMLMTrainer(XLMRobertaForMaskedLM):
    """`XLMRobertaForMaskedLM` (same parameters and names, so its checkpoints are HF's) with the trainer's loss
    contract; the head runs on the scored positions only (about 15% of the tokens)."""

    label_smoothing = 0.0

    def forward(self, input_ids, attention_mask, labels, num_items_in_batch=None) -> MLMLoss:
        hidden = self.roberta(input_ids=input_ids, attention_mask=attention_mask)[0]
        scored = labels.ne(IGNORE_INDEX)
        logits = self.lm_head(hidden[scored])
        losses = F.cross_entropy(logits.float(), labels[scored], reduction="none",
                                 label_smoothing=self.label_smoothing)
        token_losses = torch.zeros(labels.shape, dtype=torch.float32, device=losses.device)
        token_losses[scored] = losses.detach()
        divisor = num_items_in_batch if num_items_in_batch is not None else max(len(losses), 1)
        return MLMLoss(loss=losses.sum() / divisor, token_losses=token_losses)


def mlm_flops(config, batch: dict) -> float:
    """Training FLOPs (3 x forward, matmuls only) of a masked-LM batch: every layer over the real tokens, the head
    (dense + vocabulary projection) over the scored ones."""
    h, i, v, n = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    s = batch["attention_mask"].sum(1).double()
    scored = float(batch["labels"].ne(IGNORE_INDEX).sum())
    body = n * (2 * (4 * h * h + 2 * h * i) * s.sum() + 4 * h * (s * s).sum())
    head = scored * (2 * h * h + 2 * h * v)
    return float(3 * (body + head))


def write_tagged_encoder(source: Path, out_dir: Path, tokenizer, seed: int) -> None:
    """Save the XLM-R of `source` with its embedding (and MLM head bias) grown to `tokenizer` (the source's tokenizer
    plus language tags): each new row starts at the mean of the existing rows. A missing MLM head (an
    `XLMRobertaModel` checkpoint) starts random, seeded by `seed`. Written beside `out_dir`, renamed when complete."""
    torch.manual_seed(seed)
    model = XLMRobertaForMaskedLM.from_pretrained(str(source), dtype=torch.float32)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[old:] = emb[:old].mean(0)
        bias = model.lm_head.bias
        bias[old:] = bias[:old].mean()
    with staged_directory(out_dir) as staging:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
    log.info("%s: %s with %d language-tag rows added (mean of the %d others)", out_dir, source, len(tokenizer) - old,
             old)


# -------------------------------------------------------------------------------------------------------- task


class MLMTask(Task):
    """MLM pretraining for `Trainer`: model from scratch or from `model.path`, batches from `data.shards`."""

    name = "mlm"

    def __init__(self, cfg: MLMRunConfig, out_dir: str | Path):
        self.cfg, self.out = cfg, Path(out_dir)
        self.source_rows = None   # continuing: the source's embedding rows, if tags must be added to them

    # -- before the process group -----------------------------------------------------------------------------
    def check(self):
        """The starting point (exactly one of model.path / model.tokenizer), the masking rates and the shard sets
        against the tokenizer; returns the tokenizer (with the language tags)."""
        from swcm.data.mlm import MaskingRates
        from swcm.data.shards import check_shards
        from swcm.tokenization import load_tokenizer

        m, d = self.cfg.model, self.cfg.data
        if bool(m.path) == bool(m.tokenizer):
            raise ConfigError("model.path / model.tokenizer: set exactly one (an XLM-R directory to continue from, "
                              "or a tokenizer directory to start from scratch)")
        try:
            MaskingRates(d.mlm_probability, d.mask_fraction, d.random_fraction)
        except ValueError as e:
            raise ConfigError(f"data.mask_fraction / data.random_fraction: {e}") from None
        if m.hidden_size % m.num_attention_heads:
            raise ConfigError(f"model.hidden_size {m.hidden_size}: not a multiple of model.num_attention_heads "
                              f"{m.num_attention_heads}")
        if m.path:
            tokenizer = self._continued_tokenizer(Path(m.path))
        else:
            if not (Path(m.tokenizer) / "tokenizer_config.json").is_file():
                raise ConfigError(f"model.tokenizer: {m.tokenizer} is not a tokenizer directory (no "
                                  "tokenizer_config.json); make one with launch/make_tokenizer.py")
            tokenizer = load_tokenizer(m.tokenizer)
        if not d.shards:
            raise ConfigError("data.shards: no shard directory given")
        self.lang_codes = sorted(check_shards(d.shards, tokenizer, url_prefix=d.shard_url_prefix)["tokenizer"]
                                 ["lang_tags"])
        if d.dev_shards:
            check_shards(d.dev_shards, tokenizer, url_prefix=d.shard_url_prefix)
        self.tokenizer = tokenizer
        return tokenizer

    def _continued_tokenizer(self, path: Path):
        from swcm.tokenization import load_tokenizer

        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"model.path: {path / 'config.json'}: cannot read an XLM-R config ({e})") from None
        problem = not_an_encoder(config)
        if problem:
            raise ConfigError(f"model.path: {path / 'config.json'}: {problem}")
        tokenizer = load_tokenizer(path)
        if len(tokenizer) != config.get("vocab_size"):
            raise ConfigError(f"model.path: {path}: the tokenizer has {len(tokenizer)} tokens, config.json's "
                              f"vocab_size is {config.get('vocab_size')}")
        rows = len(tokenizer)
        add_language_tags(tokenizer, self.cfg.model.lang_codes)
        if len(tokenizer) > rows:
            self.source_rows = rows
        return tokenizer

    def model_path(self) -> Path | None:
        """The HF directory the model starts from: `model.path`, its tagged copy in RUN/init_model when tags had to
        be added, or None from scratch."""
        if not self.cfg.model.path:
            return None
        return self.out / "init_model" if self.source_rows is not None else Path(self.cfg.model.path)

    # -- after it ---------------------------------------------------------------------------------------------
    def prepare(self, trainer) -> None:
        """Continuing from a directory without the language tags: rank 0 writes RUN/init_model (once; a resumed run
        reuses it) while the other ranks wait."""
        path = self.model_path()
        if self.source_rows is not None and trainer.rank == 0 and not (path / "config.json").is_file():
            write_tagged_encoder(Path(self.cfg.model.path), path, trainer.tokenizer, self.cfg.model.init_seed)
        dist.barrier()

    def model_config(self):
        """The XLMRobertaConfig of the model `build_model` makes (continuing: the source's, grown by the tags)."""
        from transformers import XLMRobertaConfig

        m, tok = self.cfg.model, self.tokenizer
        if m.path:
            return XLMRobertaConfig.from_pretrained(m.path, vocab_size=len(tok))
        return XLMRobertaConfig(
            vocab_size=len(tok), hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
            num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
            max_position_embeddings=m.max_position_embeddings, hidden_dropout_prob=m.dropout,
            attention_probs_dropout_prob=m.dropout, type_vocab_size=1, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)

    def config_dir(self) -> Path:
        """`model_config()` and the tokenizer, saved once in a temporary directory: what a checkpoint resumed into
        this run must match (there is no starting directory from scratch, nor one with the tags before `prepare`)."""
        if getattr(self, "_config_dir", None) is None:
            self._config_dir = tempfile.TemporaryDirectory(prefix="swcm-mlm-config-")
            self.model_config().save_pretrained(self._config_dir.name)
            self.tokenizer.save_pretrained(self._config_dir.name)
        return Path(self._config_dir.name)

    def build_model(self, cfg: MLMRunConfig):
        m = cfg.model
        if m.path:
            torch.manual_seed(m.init_seed)   # decides a missing MLM head
            model = XLMRobertaMLMTrainer.from_pretrained(str(self.model_path()), dtype=torch.float32,
                                                         attn_implementation=m.attn_implementation)
        else:
            torch.manual_seed(m.init_seed)
            model = XLMRobertaMLMTrainer._from_config(self.model_config(), attn_implementation=m.attn_implementation,
                                                      dtype=torch.float32)
        model.label_smoothing = cfg.train.label_smoothing
        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model

    def build_data(self, tokenizer, rank: int, world: int, micro_batch: int):
        from swcm.data.mlm import MaskedLMStream, MaskingRates
        from swcm.data.stream import PretrainStream

        d = self.cfg.data
        rates = MaskingRates(d.mlm_probability, d.mask_fraction, d.random_fraction)
        stream_cfg = dataclasses.replace(d.stream_config(), max_samples=micro_batch)
        train = MaskedLMStream(PretrainStream(stream_cfg, tokenizer, rank=rank, world_size=world), tokenizer, rates,
                               d.seed, rank)
        dev = (MaskedLMStream(PretrainStream(stream_cfg, tokenizer, rank=rank, world_size=world, split="dev"),
                              tokenizer, rates, d.seed, rank) if d.dev_shards else None)
        return train, dev

    def loss_keys(self, model_config) -> list[str]:
        return [f"lang_{code}" for code in self.lang_codes]

    @staticmethod
    def sample_keys(batch: dict) -> list[tuple[str, ...]]:
        return [(f"lang_{lang}",) for lang in batch["src_lang"]]

    def flops(self, model_config, batch: dict) -> float:
        return mlm_flops(model_config, batch)

    def describe(self, model_config) -> str:
        return (f"XLM-R masked LM, {model_config.num_hidden_layers} layers, hidden {model_config.hidden_size}, "
                f"vocabulary {model_config.vocab_size}")

    def evaluate(self, trainer, step: int) -> dict[str, float]:
        """The masked-token dev loss over `train.dev_batches` batches (the same masks at every evaluation)."""
        loss = trainer.dev_loss()
        return {} if loss is None else {"loss": loss}
