"""swcm_kernels.attention vs its fp32 reference (flash-attention's 2x-of-same-precision-PyTorch rule).

On CPU the kernels run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without CUDA, before
triton is first imported); on a CUDA machine they run compiled, and the GPU-only cases, marked `gpu`
(`pytest -m gpu`, which `make gpu-check` runs), run too.

Dropout is checked against the reference given the kernel's own keep mask (`dropout_mask`, the
kernels' RNG code), so every element of the output and of each gradient is compared, not a statistic.
"""

import pytest
import torch

from kernel_utils import COMPILE_SM90_PRELUDE, assert_within_2x_baseline, run_without_interpreter
from swcm_kernels import attention as attn
from swcm_kernels.attention import FlashAttentionFunction, attention_reference, dropout_mask, flash_attention

COMPILED_GPU = torch.cuda.is_available() and not attn._INTERPRET_REQUESTED
DEVICE = "cuda" if COMPILED_GPU else "cpu"
if not COMPILED_GPU and not attn._INTERPRETED:  # a misconfigured run must fail, not skip every test
    raise RuntimeError("triton can launch neither compiled (no GPU) nor interpreted (triton was imported before "
                       "TRITON_INTERPRET=1 was set): export TRITON_INTERPRET=1 for the test run")
needs_compiled_gpu = pytest.mark.skipif(
    not COMPILED_GPU, reason="needs a CUDA GPU with compiled kernels (TRITON_INTERPRET=1 is set)"
    if torch.cuda.is_available() else "needs a CUDA GPU")

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


def _check(Tq, Tk, D, dtype, causal, padded, seed=0, dropout_p=0.0):
    """Output and dq, dk, dv against the reference (2x rule); with dropout_p > 0 the kernel runs with
    dropout seed `seed` and the reference applies dropout_mask(seed, ...), the mask the kernel used."""
    all_pad_row = padded and not causal
    q, k, v, dout, mask = _make_inputs(Tq, Tk, D, dtype, padded, all_pad_row, seed)
    kw = dict(causal=causal, key_padding_mask=mask)
    kernel_kw, ref_kw = dict(kw), dict(kw)
    if dropout_p > 0:
        keep = dropout_mask(seed, B, H, Tq, Tk, dropout_p, device=DEVICE)
        assert 0 < keep.sum() < keep.numel(), "a dropout mask that keeps all or nothing tests nothing"
        kernel_kw.update(dropout_p=dropout_p, seed=seed)
        ref_kw.update(dropout_keep=keep, dropout_p=dropout_p)
    got = _out_and_grads(flash_attention, q, k, v, dout, **kernel_kw)
    # Truth: the reference in fp32 for 16-bit inputs; for fp32 inputs, in fp64 so that the
    # same-precision baseline (the reference run in fp32) has a measurable error.
    truth_dtype = torch.float64 if dtype == torch.float32 else dtype
    truth = _out_and_grads(attention_reference, q.to(truth_dtype), k.to(truth_dtype), v.to(truth_dtype),
                           dout.to(truth_dtype), **ref_kw)
    base = _out_and_grads(attention_reference, q, k, v, dout, upcast=False, **ref_kw)
    errs = {}
    for name, g, t, b in zip(("out", "dq", "dk", "dv"), got, truth, base):
        assert g.dtype == dtype and g.shape == b.shape
        assert torch.isfinite(g).all(), f"{name} has NaN/inf"
        errs[name] = assert_within_2x_baseline(name, g, b, t, dtype)
    if causal and Tq > Tk:  # the first Tq - Tk queries see no key: exactly zero output and dq
        for name, g in zip(("out", "dq"), got[:2]):
            assert (g[:, :, :Tq - Tk] == 0).all(), f"kernel {name} not zero for queries without keys"
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


# (Tq, Tk, D, causal, padded): ragged and cross both ways, T = 1 and rows without keys (33/17 causal).
DROPOUT_CASES = [
    (17, 17, 32, False, True),
    (33, 33, 64, True, False),
    (17, 33, 32, True, True),
    (33, 17, 32, True, True),
    (33, 17, 64, False, False),
    (1, 17, 32, False, True),
]


@pytest.mark.parametrize("p", [0.3, 0.5])
@pytest.mark.parametrize("Tq,Tk,D,causal,padded", DROPOUT_CASES)
def test_dropout_fp32_matches_reference_with_kernel_mask(Tq, Tk, D, causal, padded, p):
    _check(Tq, Tk, D, torch.float32, causal, padded, seed=11, dropout_p=p)


@pytest.mark.parametrize("Tq,Tk,causal", [(17, 33, True), (33, 33, False)], ids=["cross-causal", "self-bidir"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_dropout_16bit_matches_reference_with_kernel_mask(dtype, Tq, Tk, causal):
    _check(Tq, Tk, 64, dtype, causal, padded=True, seed=12, dropout_p=0.2)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_mask_keeps_1_minus_p_without_structure(p):
    """The kept fraction is 1 - p within 3 standard errors over 2*3*200*201 elements, and the mask has no
    structure a counter collision would leave: lag-1 correlations along keys and along queries are 0
    within 4 standard errors, and no two (batch, head) slices are equal."""
    keep = dropout_mask(3, 2, 3, 200, 201, p, device=DEVICE).cpu()
    n = keep.numel()
    se = (p * (1 - p) / n) ** 0.5
    kept = keep.double().mean().item()
    assert abs(kept - (1 - p)) <= 3 * se, f"kept {kept:.5f}, expected {1 - p} +- {3 * se:.5f}"
    x = keep.double() - kept
    for dim in (-1, -2):
        a, b = x.narrow(dim, 0, x.shape[dim] - 1), x.narrow(dim, 1, x.shape[dim] - 1)
        corr = ((a * b).mean() / (x * x).mean()).item()
        assert abs(corr) <= 4 / a.numel() ** 0.5, f"lag-1 correlation {corr:.4f} along dim {dim}"
    slices = keep.reshape(6, -1)
    assert all(not torch.equal(slices[i], slices[j]) for i in range(6) for j in range(i + 1, 6))


def test_dropout_seeds():
    """One seed gives one mask (and one output); another seed another; seed=None draws from torch's
    global generator, so torch.manual_seed reproduces a call and successive calls differ."""
    q, k, v, _, mask = _make_inputs(17, 33, 32, torch.float32, True, False, seed=4)
    assert torch.equal(dropout_mask(5, B, H, 17, 33, 0.3, device=DEVICE), dropout_mask(5, B, H, 17, 33, 0.3,
                                                                                      device=DEVICE))
    assert not torch.equal(dropout_mask(5, B, H, 17, 33, 0.3, device=DEVICE),
                           dropout_mask(6, B, H, 17, 33, 0.3, device=DEVICE))

    def run(**kw):
        return flash_attention(q, k, v, key_padding_mask=mask, dropout_p=0.3, **kw)

    assert torch.equal(run(seed=5), run(seed=5))
    assert not torch.equal(run(seed=5), run(seed=6))
    torch.manual_seed(0)
    first, second = run(), run()
    torch.manual_seed(0)
    assert torch.equal(run(), first)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dropout_p0_is_bit_identical_to_no_dropout(dtype):
    """dropout_p=0 (with a seed) runs the kernels without dropout; and the dropout code itself with every
    element kept (a seed and p=0 given to the autograd Function) changes no bit of the output or the gradients."""
    q, k, v, dout, mask = _make_inputs(33, 17, 64, dtype, True, False, seed=5)
    plain = _out_and_grads(flash_attention, q, k, v, dout, causal=True, key_padding_mask=mask)
    p0 = _out_and_grads(flash_attention, q, k, v, dout, causal=True, key_padding_mask=mask, dropout_p=0.0, seed=9)
    keep = mask.to(torch.int8).contiguous()
    scale = 64 ** -0.5
    all_kept = _out_and_grads(lambda *t: FlashAttentionFunction.apply(*t, keep, True, scale, 0.0, 9), q, k, v, dout)
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), plain, p0, all_kept):
        assert torch.equal(a, b), f"{name}: dropout_p=0 differs from no dropout"
        assert torch.equal(a, c), f"{name}: the dropout code with nothing dropped differs from no dropout"


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("Tq,Tk", [(1025, 1025), (257, 1025)])
@pytest.mark.gpu
@needs_compiled_gpu
def test_gpu_long_d128(Tq, Tk, dtype, causal):
    _check(Tq, Tk, 128, dtype, causal, padded=True, seed=2)


# Realistic sizes on the compiled path, fp16 and bf16 alternating (each case is a separate compile of four
# kernels, so not every combination): T 2048, beyond it (4096) and odd (2049); cross both ways; causal 2048
# queries on 17 keys leaves the first 2031 rows without keys and 31 query blocks whose key loop runs zero times.
GPU_CASES = [  # (dtype, Tq, Tk, D, causal, padded, dropout_p)
    (torch.bfloat16, 2048, 2048, 64, True, True, 0.0),
    (torch.float16, 2048, 2048, 64, True, True, 0.1),
    (torch.float16, 4096, 4096, 128, False, False, 0.0),
    (torch.bfloat16, 4096, 4096, 128, False, False, 0.1),
    (torch.bfloat16, 2049, 2049, 64, False, True, 0.1),
    (torch.float16, 512, 2049, 128, True, True, 0.1),
    (torch.bfloat16, 2049, 512, 64, False, False, 0.0),
    (torch.float16, 2048, 17, 64, True, False, 0.0),
]


@pytest.mark.gpu
@needs_compiled_gpu
@pytest.mark.parametrize("dtype,Tq,Tk,D,causal,padded,p", GPU_CASES)
def test_gpu_realistic(dtype, Tq, Tk, D, causal, padded, p):
    _check(Tq, Tk, D, dtype, causal, padded, seed=21, dropout_p=p)


def test_padding_is_ignored_not_just_zeroed():
    """Changing padded keys/values must not change the output (masks are applied, not assumed)."""
    q, k, v, _, mask = _make_inputs(17, 33, 32, torch.float32, True, False, seed=3)
    out = flash_attention(q, k, v, key_padding_mask=mask)
    k2 = torch.where(mask[:, None, :, None], k, torch.full_like(k, 1e3))
    v2 = torch.where(mask[:, None, :, None], v, torch.full_like(v, -1e3))
    assert torch.equal(out, flash_attention(q, k2, v2, key_padding_mask=mask))


def test_unsupported_arguments_raise():
    q = torch.randn(1, 1, 4, 32, device=DEVICE)
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout_p"):
            flash_attention(q, q, q, dropout_p=p)
        with pytest.raises(ValueError, match="dropout_p"):
            dropout_mask(0, 1, 1, 4, 4, p, device=DEVICE)
    with pytest.raises(ValueError, match="seed"):
        flash_attention(q, q, q, dropout_p=0.1, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        dropout_mask(2**63, 1, 1, 4, 4, 0.1, device=DEVICE)
    with pytest.raises(TypeError):
        flash_attention(q, q, q, dropout_p=0.1, seed=1.5)
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
        "import torch\nfrom swcm_kernels.attention import flash_attention\nq = torch.randn(1, 1, 4, 32)\n"
        "try:\n    flash_attention(q, q, q)\nexcept RuntimeError as e:\n    assert 'TRITON_INTERPRET=1' in str(e)\n"
        "    print('OK')\n")


def test_kernels_compile_for_h100():
    """The compiled CUDA path cannot run here; compiling it for sm_90 at least checks it builds and
    fits in shared memory (the interpreter accepts things the compiler rejects)."""
    run_without_interpreter(COMPILE_SM90_PRELUDE + """
import swcm_kernels.attention as A
assert not A._INTERPRETED
for dt, D, dropout in (("bf16", 128, True), ("fp16", 32, False), ("fp32", 64, True)):
    p = "*" + dt
    meta = dict(CAUSAL=True, HAS_MASK=True, DROPOUT=dropout, DOT_FP32=dt == "fp32",
                DOT_PRECISION="ieee" if dt == "fp32" else "tf32", ROUND_BF16=False, BLOCK_M=A._BLOCK_M,
                BLOCK_N=A._BLOCK_N, HEAD_DIM=D)
    opts = dict(num_warps=A._NUM_WARPS, num_stages=A._NUM_STAGES)
    sizes = dict(n_heads="i32", seq_q="i32", seq_k="i32", seed="i64", dropout_p="fp32")
    compile_sm90(A._attn_fwd_kernel, dict(Q=p, K=p, V=p, KEEP="*i8", O=p, LSE="*fp32", qk_scale="fp32", **sizes),
                 meta, **opts)
    compile_sm90(A._attn_bwd_delta_kernel, dict(O=p, DO=p, DELTA="*fp32", seq_q="i32"),
                 dict(BLOCK_M=A._BLOCK_M, HEAD_DIM=D), num_warps=A._NUM_WARPS)
    bwd = dict(Q=p, K=p, V=p, KEEP="*i8", DO=p, LSE="*fp32", DELTA="*fp32")
    scales = dict(qk_scale="fp32", softmax_scale="fp32", **sizes)
    compile_sm90(A._attn_bwd_dkdv_kernel, dict(**bwd, DK=p, DV=p, **scales), meta, **opts)
    compile_sm90(A._attn_bwd_dq_kernel, dict(**bwd, DQ=p, **scales), meta, **opts)
compile_sm90(A._dropout_mask_kernel, dict(OUT="*i8", seed="i64", dropout_p="fp32", seq_q="i32", seq_k="i32"),
             dict(BLOCK_M=A._BLOCK_M, BLOCK_N=A._BLOCK_N), num_warps=A._NUM_WARPS)
print("OK")
""")
