"""Triton helpers shared by the kernels in this package."""

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
