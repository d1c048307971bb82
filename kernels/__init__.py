"""Triton kernels on swcm's hot path; each module holds its kernels, autograd.Function, public
function and an independent PyTorch reference.

- kernels.attention: flash_attention / attention_reference
- kernels.lm_head_ce: fused_linear_cross_entropy / lm_head_ce_reference

Triton runs on CPU only in its interpreter, and only if TRITON_INTERPRET=1 is in the environment
before triton is first imported (triton's own tl.* helpers are built at that import). See
docs/kernels.md.
"""

import os


def triton_interpreter_state():
    """Returns (requested, active): requested = TRITON_INTERPRET=1 is set now; active = triton imports
    and was imported in interpreter mode, so interpreted kernels can launch on CPU tensors.
    requested and not active means the variable was set after triton's first import: interpreted
    launches would fail, and kernels decorated now are not compiled kernels either."""
    requested = os.environ.get("TRITON_INTERPRET") == "1"
    try:
        import triton.language.standard as tl_standard
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return requested, False
    return requested, isinstance(tl_standard.max, InterpretedFunction)
