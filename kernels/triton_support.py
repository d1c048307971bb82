"""Triton helpers shared by the kernels in this folder (import name `swcm_kernels`; an export carries this file
beside its modeling file, so it imports nothing but triton).

Triton runs on CPU only in its interpreter, and only if TRITON_INTERPRET=1 is in the environment before triton is
first imported (triton's own tl.* helpers are built at that import). See docs/kernels.md.
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


try:
    import triton
    import triton.language as tl
except ImportError:  # the modules that use this guard on triton themselves
    triton = None

if triton is not None:

    @triton.jit
    def cast_for_store(x, OUT, ROUND_BF16: tl.constexpr):
        """fp32 x in OUT's element type. The interpreter truncates fp32 -> bf16 where a GPU rounds to
        nearest even, so under it (ROUND_BF16) the fp32 bits are rounded to nearest even first."""
        if ROUND_BF16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
            x = bits.to(tl.float32, bitcast=True)
        return x.to(OUT.dtype.element_ty)
