"""kernels.attention vs its fp32 reference (flash-attention's 2x-of-same-precision-PyTorch rule).

On CPU the kernels run in the Triton interpreter: TRITON_INTERPRET=1 must be set before triton is
first imported, hence the setdefault before any other import. On a GPU machine run this file with
TRITON_INTERPRET=0 to test the compiled kernels (the GPU-only cases need that).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from kernel_utils import COMPILE_SM90_PRELUDE, assert_within_2x_baseline, run_without_interpreter  # noqa: E402
from kernels import attention as attn  # noqa: E402
from kernels.attention import attention_reference, flash_attention  # noqa: E402

COMPILED_GPU = torch.cuda.is_available() and not attn._INTERPRET_REQUESTED
DEVICE = "cuda" if COMPILED_GPU else "cpu"
if not COMPILED_GPU and not attn._INTERPRETED:  # a misconfigured run must fail, not skip every test
    raise RuntimeError("triton can launch neither compiled (no GPU) nor interpreted (triton was imported before "
                       "TRITON_INTERPRET=1 was set): export TRITON_INTERPRET=1 for the test run")

B, H = 2, 2
# (Tq, Tk): a single token, ragged self attention within one / several 32-blocks, cross attention
# both ways (Tq > Tk with causal leaves the first Tq - Tk queries without keys).
SHAPES = [(1, 1), (17, 17), (97, 97), (17, 33), (33, 17)]


def _make_inputs(Tq, Tk, D, dtype, padded, all_pad_row, seed):
    """q, k, v, upstream grad and (optional) key padding mask with random per-batch lengths; the
    last batch row keeps no key at all when all_pad_row."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for T in (Tq, Tk, Tk))
    dout = torch.randn(B, H, Tq, D, generator=g)
    mask = None
    if padded:
        lengths = torch.randint(1, Tk + 1, (B,), generator=g)
        if all_pad_row:
            lengths[-1] = 0
        mask = (torch.arange(Tk)[None, :] < lengths[:, None]).to(DEVICE)
    to = dict(device=DEVICE, dtype=dtype)
    return q.to(**to), k.to(**to), v.to(**to), dout.to(**to), mask


def _out_and_grads(fn, q, k, v, dout, **kw):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kw)
    return (out, *torch.autograd.grad(out, (q, k, v), dout.to(out.dtype)))


def _check(Tq, Tk, D, dtype, causal, padded, seed=0):
    all_pad_row = padded and not causal
    q, k, v, dout, mask = _make_inputs(Tq, Tk, D, dtype, padded, all_pad_row, seed)
    kw = dict(causal=causal, key_padding_mask=mask)
    got = _out_and_grads(flash_attention, q, k, v, dout, **kw)
    # Truth: the reference in fp32 for 16-bit inputs; for fp32 inputs, in fp64 so that the
    # same-precision baseline (the reference run in fp32) has a measurable error.
    truth_dtype = torch.float64 if dtype == torch.float32 else dtype
    truth = _out_and_grads(attention_reference, q.to(truth_dtype), k.to(truth_dtype), v.to(truth_dtype),
                           dout.to(truth_dtype), **kw)
    base = _out_and_grads(attention_reference, q, k, v, dout, upcast=False, **kw)
    errs = {}
    for name, g, t, b in zip(("out", "dq", "dk", "dv"), got, truth, base):
        assert g.dtype == dtype and g.shape == b.shape
        assert torch.isfinite(g).all(), f"{name} has NaN/inf"
        errs[name] = assert_within_2x_baseline(name, g, b, t, dtype)
    if all_pad_row:  # no visible key: exactly zero output and zero gradients, not NaN, in both
        for name, g, t in zip(("out", "dq", "dk", "dv"), got, truth):
            assert (g[-1] == 0).all(), f"kernel {name} not zero for the all-padding batch row"
            assert (t[-1] == 0).all(), f"reference {name} not zero for the all-padding batch row"
    return errs


@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("D", [32, 64])
@pytest.mark.parametrize("Tq,Tk", SHAPES)
def test_fp32_matches_reference(Tq, Tk, D, causal, padded):
    _check(Tq, Tk, D, torch.float32, causal, padded)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("Tq,Tk", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_16bit_matches_reference(dtype, Tq, Tk, causal):
    # bf16 runs under the interpreter because the kernels upcast dot operands to fp32 there.
    _check(Tq, Tk, 64, dtype, causal, padded=True, seed=1)


@pytest.mark.skipif(not COMPILED_GPU, reason="needs a CUDA GPU with compiled kernels (run with TRITON_INTERPRET=0)")
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("Tq,Tk", [(1025, 1025), (257, 1025)])
def test_gpu_long_d128(Tq, Tk, dtype, causal):
    _check(Tq, Tk, 128, dtype, causal, padded=True, seed=2)


def test_padding_is_ignored_not_just_zeroed():
    """Changing padded keys/values must not change the output (masks are applied, not assumed)."""
    q, k, v, _, mask = _make_inputs(17, 33, 32, torch.float32, True, False, seed=3)
    out = flash_attention(q, k, v, key_padding_mask=mask)
    k2 = torch.where(mask[:, None, :, None], k, torch.full_like(k, 1e3))
    v2 = torch.where(mask[:, None, :, None], v, torch.full_like(v, -1e3))
    assert torch.equal(out, flash_attention(q, k2, v2, key_padding_mask=mask))


def test_unsupported_arguments_raise():
    q = torch.randn(1, 1, 4, 32, device=DEVICE)
    with pytest.raises(ValueError, match="dropout"):
        flash_attention(q, q, q, dropout_p=0.1)
    with pytest.raises(ValueError, match="head dim"):
        x = torch.randn(1, 1, 4, 48, device=DEVICE)
        flash_attention(x, x, x)
    with pytest.raises(ValueError, match="key_padding_mask"):
        flash_attention(q, q, q, key_padding_mask=torch.ones(1, 4, device=DEVICE))
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(q, q.half(), q)


def test_cpu_without_interpreter_raises_clear_error():
    """Without TRITON_INTERPRET=1, CPU tensors get a RuntimeError callers can catch to fall back."""
    run_without_interpreter(
        "import torch\nfrom kernels.attention import flash_attention\nq = torch.randn(1, 1, 4, 32)\n"
        "try:\n    flash_attention(q, q, q)\nexcept RuntimeError as e:\n    assert 'TRITON_INTERPRET=1' in str(e)\n"
        "    print('OK')\n")


def test_kernels_compile_for_h100():
    """The compiled CUDA path cannot run here; compiling it for sm_90 at least checks it builds and
    fits in shared memory (the interpreter accepts things the compiler rejects)."""
    run_without_interpreter(COMPILE_SM90_PRELUDE + """
import kernels.attention as A
assert not A._INTERPRETED
for dt, D in (("bf16", 128), ("fp16", 32), ("fp32", 64)):
    p = "*" + dt
    meta = dict(CAUSAL=True, HAS_MASK=True, DOT_FP32=dt == "fp32", DOT_PRECISION="ieee" if dt == "fp32" else "tf32",
                ROUND_BF16=False, BLOCK_M=A._BLOCK_M, BLOCK_N=A._BLOCK_N, HEAD_DIM=D)
    opts = dict(num_warps=A._NUM_WARPS, num_stages=A._NUM_STAGES)
    sizes = dict(n_heads="i32", seq_q="i32", seq_k="i32")
    compile_sm90(A._attn_fwd_kernel, dict(Q=p, K=p, V=p, KEEP="*i8", O=p, LSE="*fp32", qk_scale="fp32", **sizes),
                 meta, **opts)
    compile_sm90(A._attn_bwd_delta_kernel, dict(O=p, DO=p, DELTA="*fp32", seq_q="i32"),
                 dict(BLOCK_M=A._BLOCK_M, HEAD_DIM=D), num_warps=A._NUM_WARPS)
    bwd = dict(Q=p, K=p, V=p, KEEP="*i8", DO=p, LSE="*fp32", DELTA="*fp32")
    scales = dict(qk_scale="fp32", softmax_scale="fp32", **sizes)
    compile_sm90(A._attn_bwd_dkdv_kernel, dict(**bwd, DK=p, DV=p, **scales), meta, **opts)
    compile_sm90(A._attn_bwd_dq_kernel, dict(**bwd, DQ=p, **scales), meta, **opts)
print("OK")
""")
