"""The Hugging Face warm start (Rothe et al., 2020) on swcm's trainer: `EncoderDecoderModel` built from two copies of
an XLM-R encoder (the decoder gets random cross-attention and keeps the encoder's MLM head as its LM head),
pretrained on DAE + MT shards and fine-tuned on task JSONL exactly as the SWCM rows are -- the same batches, engine,
optimizer, schedule, steps and loss (a per-token mean over the step) -- so that only the model differs.

    python -m swcm.ablation.warm_start pretrain --config RUN_CONFIG --deepspeed_config DS --out RUN   (a rank each;
    python -m swcm.ablation.warm_start finetune --config FT_CONFIG --deepspeed_config DS --out RUN    see ablate.py)

`model.path` is the XLM-R encoder directory (a fresh warm start) or an exported warm-start directory (RUN/hf of a
`pretrain` run). Each run ends with RUN/hf, an ordinary `EncoderDecoderModel` directory with the tokenizer, which
`launch/evaluate.py --model` scores as it scores SWCM (the `tags` layout: decoder prefix `<s> <tgt_lang>`).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from swcm.atomic_write import write_atomic
from swcm.config import ConfigError
from swcm.hf_dir import XLMR, dir_kind
from swcm.seq2seq_layout import IGNORE_INDEX
from swcm.training.finetune_task import FinetuneTask
from swcm.training.pretrain_task import TASKS, PretrainTask

log = logging.getLogger(__name__)

ENCODER_DECODER = "encoder-decoder"   # model_type of an EncoderDecoderModel directory


def load_warm_start(path: str | Path, tokenizer, *, seed: int, attn_implementation: str = "sdpa"):
    """The `EncoderDecoderModel` of `path`: an exported one as it is, or a fresh warm start from the XLM-R directory
    `path` (encoder and decoder both copies of it; the decoder's cross-attention random, seeded by `seed`). The
    encoder's pooler, which no seq2seq output uses, is dropped; start, pad and end ids come from `tokenizer`."""
    from transformers import EncoderDecoderModel

    path = Path(path)
    if dir_kind(path) == ENCODER_DECODER:
        model = EncoderDecoderModel.from_pretrained(str(path), dtype=torch.float32,
                                                    attn_implementation=attn_implementation)
    else:
        torch.manual_seed(seed)
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(
            str(path), str(path), encoder_add_pooling_layer=False, encoder_dtype=torch.float32,
            decoder_dtype=torch.float32, encoder_attn_implementation=attn_implementation,
            decoder_attn_implementation=attn_implementation)
    model.encoder.pooler = None
    return with_token_ids(model, tokenizer)


def with_token_ids(model, tokenizer):
    """`model` with the start / pad / end ids of `tokenizer` in its config and generation config."""
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id, cfg.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


@dataclass
class Seq2SeqLoss:
    loss: torch.Tensor           # scored-token loss sum / num_items_in_batch (their mean without it)
    token_losses: torch.Tensor   # (B, T) fp32, detached, 0 where the label is IGNORE_INDEX


class WarmStartModel(nn.Module):
    """The trainer's view of an `EncoderDecoderModel`: the seq2seq batch in, the loss contract out (token
    cross-entropy sum / num_items_in_batch, per-token losses); `generate` and `device` for dev generation."""

    def __init__(self, model, label_smoothing: float = 0.0):
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing
        self.config = model.config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def forward(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels,
                num_items_in_batch=None) -> Seq2SeqLoss:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                            decoder_attention_mask=decoder_attention_mask, use_cache=False).logits
        losses = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="none", label_smoothing=self.label_smoothing).view(labels.shape)
        scored = labels.ne(IGNORE_INDEX)
        losses = losses * scored   # label smoothing leaves nothing at ignored positions either
        divisor = num_items_in_batch if num_items_in_batch is not None else scored.sum().clamp(min=1)
        return Seq2SeqLoss(loss=losses.sum() / divisor, token_losses=losses.detach())


def warm_start_flops(config, batch: dict) -> float:
    """Training FLOPs (3 x forward, matmuls only): encoder layers over the source, decoder layers (self-attention,
    cross-attention, FFN) over the target, the LM head (dense + vocabulary projection) over the target."""
    enc, dec = config.encoder, config.decoder
    h, i, v, n = enc.hidden_size, enc.intermediate_size, dec.vocab_size, enc.num_hidden_layers
    s = batch["attention_mask"].sum(1).double()
    t = batch["decoder_attention_mask"].sum(1).double()
    layer = 2 * (4 * h * h + 2 * h * i)
    encoder = n * (layer * s.sum() + 4 * h * (s * s).sum())
    cross = 2 * (2 * h * h) * t.sum() + 2 * (2 * h * h) * s.sum() + 4 * h * (s * t).sum()
    decoder = dec.num_hidden_layers * (layer * t.sum() + 4 * h * (t * t).sum() + cross)
    head = (2 * h * h + 2 * h * v) * t.sum()
    return float(3 * (encoder + decoder + head))


def _lang_codes(tokenizer) -> list[str]:
    """The language codes whose tags `<code>` the tokenizer has as special tokens."""
    return sorted(t[1:-1] for t in tokenizer.all_special_tokens
                  if t.startswith("<") and t.endswith(">") and t not in ("<s>", "</s>", "<pad>", "<unk>", "<mask>"))


def export_warm_start(run_dir: Path, out_dir: Path, tokenizer, step: int | None = None) -> Path:
    """RUN/hf-style directory of a warm-start run's checkpoint (newest complete unless `step`): consolidated by
    DeepSpeed's utilities, loaded strictly, saved with the tokenizer, reloaded and checked (same logits) before it
    is renamed into place."""
    from transformers import EncoderDecoderConfig, EncoderDecoderModel

    from swcm.convert import ConversionError
    from swcm.convert.staging import staged_directory
    from swcm.convert.to_hf import consolidated_state_dict

    config = EncoderDecoderConfig.from_pretrained(str(run_dir / "model"))
    model = EncoderDecoderModel(config=config)
    model.encoder.pooler = None
    state = {k.removeprefix("model."): v for k, v in consolidated_state_dict(run_dir, step).items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConversionError(f"{run_dir}: checkpoint does not fit the run's model config: missing "
                              f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    model.tie_weights()
    model = with_token_ids(model, tokenizer).eval()
    probe = {"input_ids": torch.tensor([[tokenizer.bos_token_id, 5, 6, tokenizer.eos_token_id]]),
             "decoder_input_ids": torch.tensor([[tokenizer.bos_token_id, 7, 8]])}
    with staged_directory(out_dir) as staging:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        with torch.no_grad():
            diff = (EncoderDecoderModel.from_pretrained(str(staging)).eval()(**probe).logits
                    - model(**probe).logits).abs().max().item()
        if diff > 1e-4:
            raise ConversionError(f"{out_dir}: the saved warm start's logits differ from the checkpoint's by "
                                  f"{diff:.3g}")
    log.info("wrote %s (EncoderDecoderModel, verified by reloading)", out_dir)
    return out_dir


class _WarmStartModelHooks:
    """What both warm-start tasks share: the model, its FLOPs, the log line, the languages and the export."""

    def build_model(self, cfg):
        model = load_warm_start(self.model_path(), self.tokenizer, seed=cfg.train.seed,
                                attn_implementation=cfg.model.attn_implementation)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return WarmStartModel(model, cfg.train.label_smoothing)

    def flops(self, model_config, batch: dict) -> float:
        return warm_start_flops(model_config, batch)

    def lm_head(self, model_config, device) -> str:
        return "naive"   # the HF decoder's own head (full logits), with Seq2SeqLoss on top

    def describe(self, model_config) -> str:
        return (f"HF EncoderDecoderModel warm start, {model_config.encoder.num_hidden_layers} + "
                f"{model_config.decoder.num_hidden_layers} layers")

    def config_dir(self) -> Path:
        """An exported warm start's own directory; for a fresh one, a temporary directory with the
        EncoderDecoderConfig `load_warm_start` makes and the tokenizer (what a resumed checkpoint must match)."""
        path = self.model_path()
        if dir_kind(path) == ENCODER_DECODER:
            return path
        if getattr(self, "_config_dir", None) is None:
            from transformers import EncoderDecoderConfig, XLMRobertaConfig

            self._config_dir = tempfile.TemporaryDirectory(prefix="swcm-warm-start-config-")
            decoder = XLMRobertaConfig.from_pretrained(str(path), is_decoder=True, add_cross_attention=True)
            EncoderDecoderConfig.from_encoder_decoder_configs(XLMRobertaConfig.from_pretrained(str(path)), decoder) \
                .save_pretrained(self._config_dir.name)
            self.tokenizer.save_pretrained(self._config_dir.name)
        return Path(self._config_dir.name)

    def _check_model_dir(self, path: Path, key: str):
        from swcm.tokenization import load_tokenizer

        if dir_kind(path) not in (XLMR, ENCODER_DECODER):
            raise ConfigError(f"{key}: {path} is neither an XLM-R encoder directory nor an exported warm start "
                              "(config.json's model_type must be xlm-roberta or encoder-decoder, and not an SWCM "
                              "model's)")
        self.tokenizer = load_tokenizer(path)
        self.lang_codes = _lang_codes(self.tokenizer)
        if not self.lang_codes:
            raise ConfigError(f"{key}: the tokenizer in {path} has no language tags (<bo>, <zh>, ...)")
        return self.tokenizer


class WarmStartPretrainTask(_WarmStartModelHooks, PretrainTask):
    """DAE + MT pretraining of the warm start on the shards (as `PretrainTask` trains SWCM); RUN/hf at the end."""

    name = "warm-start-pretrain"

    def check(self):
        from swcm.data.shards import check_shards

        tokenizer = self._check_model_dir(self.model_path(), "model.path")
        if not self.cfg.data.shards:
            raise ConfigError("data.shards: no shard directory given")
        check_shards(self.cfg.data.shards, tokenizer)
        if self.cfg.data.dev_shards:
            check_shards(self.cfg.data.dev_shards, tokenizer)
        return tokenizer

    def loss_keys(self, model_config) -> list[str]:
        return [*TASKS, *(f"lang_{code}" for code in self.lang_codes)]

    def finish(self, trainer) -> None:
        if trainer.rank == 0:
            export_warm_start(trainer.out, trainer.out / "hf", trainer.tokenizer)


class WarmStartFinetuneTask(_WarmStartModelHooks, FinetuneTask):
    """Fine-tuning of the warm start on task JSONL (as `FinetuneTask` fine-tunes SWCM: the same batches, dev
    evaluation, best checkpoint and early stopping); RUN/hf is the best checkpoint (the newest without dev scores)."""

    name = "warm-start-finetune"

    def model_path(self) -> Path:
        return Path(self.cfg.model.path)

    def check(self):
        from swcm.tasks.jsonl import DataError, read_examples

        if self.cfg.model.init_run or not self.cfg.model.path:
            raise ConfigError("model.path: set it to an XLM-R encoder or an exported warm start (model.init_run is "
                              "for SWCM pretraining runs)")
        tokenizer = self._check_model_dir(self.model_path(), "model.path")
        if not self.cfg.data.train:
            raise ConfigError("data.train: no train file given")
        try:
            self.train_examples = [read_examples(f.path, self.lang_codes) for f in self.cfg.data.train]
            self.dev_examples = read_examples(self.cfg.data.dev, self.lang_codes) if self.cfg.data.dev else None
        except DataError as e:
            raise ConfigError(str(e)) from None
        if self.cfg.eval.metric != "loss" and self.dev_examples is None and self.cfg.train.dev_every:
            raise ConfigError(f"eval.metric {self.cfg.eval.metric!r} needs data.dev (or set train.dev_every=0)")
        return tokenizer

    def loss_keys(self, model_config) -> list[str]:
        return [f"lang_{code}" for code in self.lang_codes]

    def finish(self, trainer) -> None:
        if trainer.rank != 0:
            return
        export_warm_start(self.out, self.out / "hf", trainer.tokenizer, step=self.best_step)
        write_atomic(self.out / "best.json", json.dumps(
            {"step": self.best_step, "metric": self.cfg.eval.metric, "value": self.best_value}) + "\n")


# --------------------------------------------------------------------------------------------------- commands


def main(argv=None) -> int:
    """`pretrain` / `finetune` (the trainer's command line, started one process per rank)."""
    from swcm.config import FinetuneRunConfig, RunConfig
    from swcm.training.entry import run

    argv = list(sys.argv[1:] if argv is None else argv)
    at = next((i for i, a in enumerate(argv) if not a.startswith("--local_rank")), None)
    command = None if at is None else argv.pop(at)
    rest = argv
    if command == "pretrain":
        return run(__doc__, "pretraining run config JSON", RunConfig, lambda cfg, out: WarmStartPretrainTask(cfg),
                   rest)
    if command == "finetune":
        return run(__doc__, "fine-tuning config JSON", FinetuneRunConfig, WarmStartFinetuneTask, rest)
    print(f"error: expected a command pretrain | finetune, got {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    from swcm.fast_exit import skip_final_gc

    skip_final_gc()
    sys.exit(main())
