"""What pretraining feeds the trainer: streamed DAE + MT batches from webdataset shards, and the dev loss."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from swcm.config import ConfigError, RunConfig
from swcm.training.seq2seq_task import Seq2SeqTask

TASKS = ("dae", "mt")


class PretrainTask(Seq2SeqTask):
    """The pretraining recipe for `Trainer`: model from `model.path`, data from `data.shards` / `data.dev_shards`."""

    name = "pretrain"

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def model_path(self) -> Path:
        return Path(self.cfg.model.path)

    def check(self):
        """Check the model directory and the shard sets against the model's tokenizer (before any process group);
        return the tokenizer."""
        from swcm.data.shards import check_shards
        from swcm.tasks.model_dir import ModelDirError, lang_codes
        from swcm.tokenization import load_tokenizer

        self.check_kernels()
        model_dir = self.model_path()
        try:
            lang_codes(model_dir)
        except ModelDirError as e:
            raise ConfigError(f"model.path: {e}; create one with `launch/convert_checkpoint.py from-encoder`") \
                from None
        if not self.cfg.data.shards:
            raise ConfigError("data.shards: no shard directory given")
        tokenizer = load_tokenizer(model_dir)
        check_shards(self.cfg.data.shards, tokenizer)
        if self.cfg.data.dev_shards:
            check_shards(self.cfg.data.dev_shards, tokenizer)
        return tokenizer

    def build_data(self, tokenizer, rank: int, world: int, micro_batch: int):
        """(train stream, dev stream or None) for this rank; micro-batches of at most `micro_batch` samples."""
        from swcm.data.stream import PretrainStream

        data_cfg = replace(self.cfg.data, max_samples=micro_batch)
        train = PretrainStream(data_cfg, tokenizer, rank=rank, world_size=world)
        dev = (PretrainStream(data_cfg, tokenizer, rank=rank, world_size=world, split="dev")
               if self.cfg.data.dev_shards else None)
        return train, dev

    def loss_keys(self, model_config) -> list[str]:
        """The keys of the per-objective / per-language losses logged as `train/loss_<key>`."""
        return [*TASKS, *(f"lang_{code}" for code in model_config.lang_codes or [])]

    @staticmethod
    def sample_keys(batch: dict) -> list[tuple[str, str]]:
        """Per sample, the loss keys it counts towards: its objective and its target language."""
        return [(task, f"lang_{lang}") for task, lang in zip(batch["task"], batch["tgt_lang"])]

    def evaluate(self, trainer, step: int) -> dict[str, float]:
        """The per-token dev loss over `train.dev_batches` batches (collective)."""
        loss = trainer.dev_loss()
        return {} if loss is None else {"loss": loss}
