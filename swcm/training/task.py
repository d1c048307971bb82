"""What a training task tells the trainer (swcm/training/trainer.py); `PretrainTask` and `FinetuneTask` fill it in.

The trainer owns the engine, the step, logs and checkpoints; a task owns where the model and the batches come
from, what a dev evaluation measures, and what follows from it (best checkpoint, early stopping, the export).
"""

from __future__ import annotations

from pathlib import Path


class Task:
    """The hooks with their do-nothing defaults; subclasses set `name` and implement the first five."""

    name = "task"

    def check(self):
        """Check everything the user handed in (before any process group); return the model's tokenizer."""
        raise NotImplementedError

    def model_path(self) -> Path:
        """The HF directory the model is loaded from (valid after `prepare`)."""
        raise NotImplementedError

    def config_dir(self) -> Path:
        """A directory with the starting model's config.json and tokenizer, valid before `prepare`."""
        return self.model_path()

    def build_data(self, tokenizer, rank: int, world: int, micro_batch: int):
        """(train stream, dev stream or None) for this rank, micro-batches of at most `micro_batch` samples."""
        raise NotImplementedError

    def build_model(self, cfg):
        """The model to train (fp32, train settings applied), from `model_path()`; the trainer has set up ZeRO-3
        construction when that stage is on."""
        raise NotImplementedError

    def lm_head(self, model_config, device) -> str:
        """The LM head + loss path the model's training forward takes on `device` (recorded in RUN/config.json)."""
        return "naive"

    def loss_keys(self, model_config) -> list[str]:
        """The keys of the losses logged as `train/loss_<key>`."""
        raise NotImplementedError

    def flops(self, model_config, batch: dict) -> float:
        """Training FLOPs (forward + backward) of one batch, for MFU."""
        raise NotImplementedError

    def describe(self, model_config) -> str:
        """A few words on the model's shape for the start-up log line."""
        return type(model_config).__name__

    @staticmethod
    def sample_keys(batch: dict) -> list[tuple[str, ...]]:
        """Per sample of `batch`, the loss keys it counts towards."""
        raise NotImplementedError

    def prepare(self, trainer) -> None:
        """After the process group exists, before the model is loaded (collective)."""

    def evaluate(self, trainer, step: int) -> dict[str, float]:
        """Dev metrics (collective; every rank returns the same values)."""
        return {}

    def after_evaluate(self, step: int, metrics: dict[str, float]) -> tuple[bool, bool]:
        """(save a checkpoint of this step now, stop training) after the evaluation at `step`."""
        return False, False

    def protected_steps(self) -> set[int]:
        """Checkpoint steps that rotation must keep."""
        return set()

    def state_dict(self) -> dict:
        """What the task needs to resume (stored in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` on resume."""

    def finish(self, trainer) -> None:
        """After the last step and the final barrier (every rank calls it)."""
