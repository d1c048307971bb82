"""What fine-tuning feeds the trainer: seq2seq examples from JSONL files, dev loss and generation scores, the best
checkpoint by a chosen metric, early stopping, and an HF export of the best checkpoint in `RUN/hf`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch.distributed as dist

from swcm.atomic_write import write_atomic
from swcm.config import ConfigError, FinetuneRunConfig
from swcm.training import checkpointing
from swcm.training.seq2seq_task import Seq2SeqTask

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"loss"}


class FinetuneTask(Seq2SeqTask):
    """Model from `model.path` (an HF directory) or `model.init_run` (a pretraining run's newest complete
    checkpoint); train examples from `data.train` (files with caps / weights), dev examples from `data.dev`."""

    name = "finetune"

    def __init__(self, cfg: FinetuneRunConfig, out_dir: str | Path):
        self.cfg, self.out = cfg, Path(out_dir)
        self.best_step, self.best_value, self.evals_since_best = None, None, 0

    # -- before the process group -----------------------------------------------------------------------------
    def model_path(self) -> Path:
        return Path(self.cfg.model.path) if self.cfg.model.path else self.out / "init_model"

    def config_dir(self) -> Path:
        return self._source_model_dir()

    def _source_model_dir(self) -> Path:
        """The directory holding the starting model's config and tokenizer."""
        m = self.cfg.model
        if bool(m.path) == bool(m.init_run):
            raise ConfigError("model.path / model.init_run: set exactly one (an HF directory, or a pretraining run)")
        if m.init_run:
            run = Path(m.init_run)
            if not checkpointing.complete_checkpoints(run / "checkpoints"):
                raise ConfigError(f"model.init_run: {run} has no complete checkpoint under checkpoints/")
            return run / "model"
        return Path(m.path)

    def check(self):
        """The starting model, the train and dev files (every line, against the model's languages); returns the
        tokenizer. Errors name the file and line."""
        from swcm.tasks.jsonl import DataError, read_examples
        from swcm.tasks.model_dir import ModelDirError, lang_codes
        from swcm.tokenization import load_tokenizer

        self.check_kernels()
        model_dir = self._source_model_dir()
        try:
            codes = lang_codes(model_dir)
        except ModelDirError as e:
            raise ConfigError(f"model.{'init_run' if self.cfg.model.init_run else 'path'}: {e}") from None
        if not self.cfg.data.train:
            raise ConfigError("data.train: no train file given")
        try:
            self.train_examples = [read_examples(f.path, codes) for f in self.cfg.data.train]
            self.dev_examples = read_examples(self.cfg.data.dev, codes) if self.cfg.data.dev else None
        except DataError as e:
            raise ConfigError(str(e)) from None
        if self.cfg.eval.metric != "loss" and self.dev_examples is None and self.cfg.train.dev_every:
            raise ConfigError(f"eval.metric {self.cfg.eval.metric!r} needs data.dev (or set train.dev_every=0)")
        return load_tokenizer(model_dir)

    # -- after it ---------------------------------------------------------------------------------------------
    def prepare(self, trainer) -> None:
        """For `model.init_run`: rank 0 consolidates the run's newest complete checkpoint into RUN/init_model (once;
        a resumed run reuses it) while the other ranks wait."""
        from swcm.convert.to_hf import export_to_hf

        if self.cfg.model.init_run and trainer.rank == 0 and not (self.model_path() / "config.json").is_file():
            log.info("model.init_run: consolidating the newest checkpoint of %s into %s", self.cfg.model.init_run,
                     self.model_path())
            export_to_hf(self.cfg.model.init_run, self.model_path(), verify=False)
        dist.barrier()

    def build_data(self, tokenizer, rank: int, world: int, micro_batch: int):
        from swcm.data.examples import Batching, ExampleStream, Source

        d = self.cfg.data
        batching = Batching(max_len=d.max_len, max_tokens=d.max_tokens, max_samples=micro_batch,
                            pad_to_multiple=d.pad_to_multiple, bucket_batches=d.bucket_batches, seed=d.seed)
        sources = [Source(Path(f.path).name, ex, f.cap, f.weight) for f, ex in zip(d.train, self.train_examples)]
        train = ExampleStream(sources, tokenizer, batching, rank=rank, world_size=world)
        dev = (ExampleStream([Source("dev", self.dev_examples)], tokenizer, batching, rank=rank, world_size=world,
                             split="dev") if self.dev_examples else None)
        return train, dev

    def loss_keys(self, model_config) -> list[str]:
        return [f"lang_{code}" for code in model_config.lang_codes or []]

    @staticmethod
    def sample_keys(batch: dict) -> list[tuple[str, ...]]:
        return [(f"lang_{lang}",) for lang in batch["tgt_lang"]]

    # -- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, trainer, step: int) -> dict[str, float]:
        """Dev loss, and chrF / ROUGE-L / BLEU of beam-search outputs on the dev examples (collective); rank 0
        keeps the outputs in RUN/dev_predictions/step_N.jsonl."""
        from swcm.tasks.distributed_generation import generate_on_ranks
        from swcm.tasks.jsonl import prediction_lines
        from swcm.tasks.scores import score_predictions

        metrics = {}
        loss = trainer.dev_loss()
        if loss is not None:
            metrics["loss"] = loss
        if self.dev_examples is None or self.cfg.eval.metric == "loss":
            return metrics
        e = self.cfg.eval
        examples = self.dev_examples[:e.max_examples or None]
        predictions = generate_on_ranks(trainer.engine.module, trainer.tokenizer, examples, num_beams=e.beam,
                                        max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                                        max_len=self.cfg.data.max_len, synced=trainer.stage == 3)
        overall = score_predictions(examples, predictions)["overall"]
        metrics.update(chrf=overall["chrf"], rouge_l=overall["rouge_l"]["f"], bleu=overall["bleu"]["score"])
        if trainer.rank == 0:
            path = self.out / "dev_predictions" / f"step_{step:08d}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, prediction_lines(examples, predictions))
        return metrics

    def after_evaluate(self, step: int, metrics: dict[str, float]) -> tuple[bool, bool]:
        """Keep the best checkpoint by `eval.metric`; stop after `eval.patience` evaluations without a better one."""
        value = metrics.get(self.cfg.eval.metric)
        if value is None:
            return False, False
        better = (self.best_value is None or
                  (value < self.best_value if self.cfg.eval.metric in LOWER_IS_BETTER else value > self.best_value))
        if better:
            self.best_step, self.best_value, self.evals_since_best = step, value, 0
        else:
            self.evals_since_best += 1
        patience = self.cfg.eval.patience
        return better, bool(patience and self.evals_since_best >= patience)

    def protected_steps(self) -> set[int]:
        return {self.best_step} if self.best_step is not None else set()

    def state_dict(self) -> dict:
        return {"best_step": self.best_step, "best_value": self.best_value, "evals_since_best": self.evals_since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best_step = state.get("best_step")
        self.best_value = state.get("best_value")
        self.evals_since_best = state.get("evals_since_best", 0)

    def finish(self, trainer) -> None:
        """Rank 0: RUN/hf from the best checkpoint (the last one without dev evaluation), verified; when every train
        example has one target language, its tag is forced so that a plain `generate()` produces that language."""
        from swcm.convert.to_hf import export_to_hf

        if trainer.rank != 0:
            return
        step = self.best_step   # None: the newest checkpoint
        targets = {ex.tgt_lang for examples in self.train_examples for ex in examples}
        forced = trainer.tokenizer.convert_tokens_to_ids(f"<{targets.pop()}>") if len(targets) == 1 else None
        export_to_hf(self.out, self.out / "hf", step=step, overwrite=True, forced_bos_token_id=forced)
        write_atomic(self.out / "best.json", json.dumps(
            {"step": step, "metric": self.cfg.eval.metric, "value": self.best_value}) + "\n")
        log.info("best checkpoint: step %s (%s %s), exported to %s", step, self.cfg.eval.metric, self.best_value,
                 self.out / "hf")
