"""Skipping an optimizer step whose gradients are not finite, the same way at every ZeRO stage.

At ZeRO 1-3 DeepSpeed's optimizer sees an invalid gradient norm and skips the step itself: gradients dropped,
lr schedule held, `engine.was_step_applied()` False. At ZeRO-0 (fp32) it checks nothing; `skip_next_step` makes it
behave alike: the gradients are zeroed (DeepSpeed still clips them), the optimizer's update is left out for this
one call, and its `overflow` flag, which DeepSpeed's engine reads after every update, holds the lr schedule.
"""

from __future__ import annotations

import deepspeed


def _no_update(*args, **kwargs) -> None:
    return None


def skip_next_step(engine) -> None:
    """Make the coming `engine.step()` a skipped step (call at ZeRO-0 only, after the last backward of the step)."""
    optimizer = engine.optimizer
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.zero_()
    optimizer.step = _no_update   # shadows the method for this one call; check_skipped removes it
    optimizer.overflow = True


def check_skipped(engine) -> None:
    """After the `engine.step()` that `skip_next_step` prepared: restore the optimizer, and fail loudly if DeepSpeed
    no longer reads its overflow flag (the lr schedule would have advanced over a skipped step)."""
    optimizer = engine.optimizer
    del optimizer.step
    optimizer.overflow = False
    if engine.was_step_applied():
        raise RuntimeError(f"DeepSpeed {deepspeed.__version__} no longer skips a ZeRO-0 step through "
                           "optimizer.overflow (swcm/training/nonfinite.py needs updating)")
