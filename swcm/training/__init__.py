"""Pretraining on DeepSpeed: a thin layer over a plain PyTorch loop (model + streamed batches + AdamW)."""
