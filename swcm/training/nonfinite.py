"""Skipping an optimizer step whose gradients are not finite, the same way at every ZeRO stage.

At ZeRO 1-3 DeepSpeed's optimizer sees an invalid gradient norm and skips the step itself: gradients dropped,
lr schedule held, `engine.was_step_applied()` False. At ZeRO-0 (fp32) it checks nothing; `skip_next_step` makes it
behave alike through the optimizer's `overflow` flag, which DeepSpeed's engine reads after every update.
"""

from __future__ import annotations

import deepspeed


def skip_next_step(engine) -> None:
    """Drop the accumulated gradients and make the coming `engine.step()` a skipped step (call at ZeRO-0 only)."""
    engine.optimizer.zero_grad(set_to_none=True)
    engine.optimizer.overflow = True


def check_skipped(engine) -> None:
    """After the `engine.step()` that `skip_next_step` prepared: reset the flag, and fail loudly if DeepSpeed no
    longer reads it (the lr schedule would have advanced over a skipped step)."""
    engine.optimizer.overflow = False
    if engine.was_step_applied():
        raise RuntimeError(f"DeepSpeed {deepspeed.__version__} no longer skips a ZeRO-0 step through "
                           "optimizer.overflow (swcm/training/nonfinite.py needs updating)")
