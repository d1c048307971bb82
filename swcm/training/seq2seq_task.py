"""What the SWCM seq2seq tasks (pretraining, fine-tuning) share: the model, its FLOPs and its log line."""

from __future__ import annotations

import torch

from swcm.training.metrics import model_flops
from swcm.training.task import Task


class Seq2SeqTask(Task):
    """An SWCMForConditionalGeneration from `model_path()`, trained with the run's model settings."""

    def check_kernels(self) -> None:
        """ConfigError (before any process group) when the run asks for a kernel path that cannot load here: the
        Triton attention, or the fused LM head + loss; `auto` attention never fails (it warns on CUDA)."""
        from swcm.config import ConfigError
        from swcm.modeling_swcm import kernel_module, triton_attention_unavailable

        model = self.cfg.model
        if model.attn_implementation == "triton" and (why := triton_attention_unavailable()) is not None:
            raise ConfigError(f"model.attn_implementation: 'triton' cannot run here: {why}")
        if model.fused_lm_head_ce:
            try:
                kernel_module("lm_head_ce")
            except ImportError as e:
                raise ConfigError(f"model.fused_lm_head_ce: {e} (set it false for the naive head)") from None

    def build_model(self, cfg):
        from swcm.modeling_swcm import SWCMForConditionalGeneration

        model = SWCMForConditionalGeneration.from_pretrained(
            str(self.model_path()), attn_implementation=cfg.model.attn_implementation, dtype=torch.float32)
        model.config.fused_lm_head_ce = cfg.model.fused_lm_head_ce
        model.config.label_smoothing = cfg.train.label_smoothing
        if cfg.model.gradient_checkpointing:
            model.activation_checkpointing_enable()
        return model

    def lm_head(self, model_config, device) -> str:
        from swcm.modeling_swcm import resolve_lm_head

        return resolve_lm_head(model_config, device)

    def flops(self, model_config, batch: dict) -> float:
        return model_flops(model_config, batch["attention_mask"].sum(1), batch["decoder_attention_mask"].sum(1))

    def describe(self, model_config) -> str:
        return f"{model_config.decoder_layers} decoder layers, {model_config.layer_pattern}"
