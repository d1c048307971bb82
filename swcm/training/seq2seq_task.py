"""What the SWCM seq2seq tasks (pretraining, fine-tuning) share: the model, its FLOPs and its log line."""

from __future__ import annotations

import torch

from swcm.training.metrics import model_flops
from swcm.training.task import Task


class Seq2SeqTask(Task):
    """An SWCMForConditionalGeneration from `model_path()`, trained with the run's model settings."""

    def build_model(self, cfg):
        from swcm.modeling_swcm import SWCMForConditionalGeneration

        model = SWCMForConditionalGeneration.from_pretrained(
            str(self.model_path()), attn_implementation=cfg.model.attn_implementation, dtype=torch.float32)
        model.config.fused_lm_head_ce = cfg.model.fused_lm_head_ce
        model.config.label_smoothing = cfg.train.label_smoothing
        if cfg.model.gradient_checkpointing:
            model.activation_checkpointing_enable()
        return model

    def flops(self, model_config, batch: dict) -> float:
        return model_flops(model_config, batch["attention_mask"].sum(1), batch["decoder_attention_mask"].sum(1))

    def describe(self, model_config) -> str:
        return f"{model_config.decoder_layers} decoder layers, {model_config.layer_pattern}"
