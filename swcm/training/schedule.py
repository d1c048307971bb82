"""The learning-rate schedule of the paper: linear warmup over a fraction of the steps, then linear decay to 0.

It is transformers' `get_linear_schedule_with_warmup` (a closed-form LambdaLR), not torch's LinearLR + SequentialLR:
those are chainable, so their lr lives in the optimizer and a schedule restored from its own state_dict alone
continues from the wrong value (tests/test_training_config.py shows it), which resuming at another world size or
ZeRO stage cannot afford.
"""

from __future__ import annotations

from transformers import get_linear_schedule_with_warmup


def warmup_linear_decay(optimizer, total_steps: int, warmup_ratio: float):
    """The k-th optimizer step (k = 0, 1, ...) gets lr x k / w for k < w, then lr x (total_steps - k) / (total_steps
    - w), with w = round(total_steps x warmup_ratio) warmup steps (transformers' convention: step 0 runs at lr 0)."""
    return get_linear_schedule_with_warmup(optimizer, int(round(total_steps * warmup_ratio)), total_steps)
