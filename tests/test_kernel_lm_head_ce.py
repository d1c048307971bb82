"""swcm_kernels.lm_head_ce vs F.linear + F.cross_entropy, with the per-dtype table in kernel_utils.

impl="triton" runs in the Triton interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 when there is no
CUDA, before triton is first imported) and compiled on a GPU; impl="torch" runs anywhere.
"""

import pytest
import torch
import torch.nn.functional as F

from kernel_utils import COMPILE_SM90_PRELUDE, assert_close_table, run_without_interpreter
from swcm_kernels import lm_head_ce as ce
from swcm_kernels.lm_head_ce import fused_linear_cross_entropy, lm_head_ce_reference

IGNORE = -100
DEVICE = "cuda" if torch.cuda.is_available() and not ce._INTERPRET_REQUESTED else "cpu"
TRITON_OK = ce.triton is not None and ce._INTERPRET_REQUESTED == ce._INTERPRETED and (
    DEVICE == "cuda" or ce._INTERPRETED)
IMPLS = [pytest.param("triton", marks=pytest.mark.skipif(not TRITON_OK, reason="triton cannot launch here")),
         "torch"]
# Odd sizes: V = 1031 (prime) makes ragged column blocks; N = 37 with chunk_size 16 gives chunks of
# 16, 16 and 5 rows; N = 1 is a single-row chunk.
SHAPES = [(37, 32, 1031), (1, 32, 1031)]
CHUNK = 16


def _make(N, H, V, dtype, with_bias, seed, ignore_every=4):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g)
    weight = torch.randn(V, H, generator=g) / H ** 0.5  # logits of order 1, like a trained head
    bias = torch.randn(V, generator=g) * 0.1 if with_bias else None
    labels = torch.randint(0, V, (N,), generator=g)
    if N > 1:
        labels[::ignore_every] = IGNORE
    to = dict(device=DEVICE, dtype=dtype)
    return hidden.to(**to), weight.to(**to), None if bias is None else bias.to(**to), labels.to(DEVICE)


def _loss_and_grads(fn, hidden, weight, bias, labels, upstream=0.5, **kw):
    """Loss and grads of (hidden, weight[, bias]) for upstream * loss (a grad_output != 1)."""
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    out = fn(leaves[0], leaves[1], labels, leaves[2] if bias is not None else None, **kw)
    loss = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(loss * upstream, leaves)
    return out, grads


def _check(N, H, V, dtype, with_bias, eps, impl, seed=0):
    hidden, weight, bias, labels = _make(N, H, V, dtype, with_bias, seed)
    (loss, token_losses), grads = _loss_and_grads(
        fused_linear_cross_entropy, hidden, weight, bias, labels, ignore_index=IGNORE, label_smoothing=eps,
        chunk_size=CHUNK, impl=impl, return_token_losses=True)
    # Expected: the reference on fp32 copies of the same values (for fp32 inputs, the reference itself).
    up = [None if t is None else t.float() for t in (hidden, weight, bias)]
    ref_loss, ref_grads = _loss_and_grads(lm_head_ce_reference, *up, labels, ignore_index=IGNORE,
                                          label_smoothing=eps)
    errs = {"loss": assert_close_table("loss", loss, ref_loss, dtype)}
    assert loss.dtype == torch.float32 and loss.dim() == 0
    for name, g, r, inp in zip(("hidden", "weight", "bias"), grads, ref_grads, (hidden, weight, bias)):
        assert g.dtype == inp.dtype, f"grad {name} dtype {g.dtype} != {inp.dtype}"
        errs[name] = assert_close_table(f"grad {name}", g, r, dtype)
    # Per-token losses: from the logits in the input dtype, as F.linear gives them, upcast.
    ref_tok = F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, ignore_index=IGNORE,
                              label_smoothing=eps, reduction="none")
    assert token_losses.dtype == torch.float32 and not token_losses.requires_grad
    assert (token_losses[labels == IGNORE] == 0).all()
    errs["token_losses"] = assert_close_table("token_losses", token_losses, ref_tok, dtype)
    return errs


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("eps", [0.0, 0.1], ids=["ls0", "ls0.1"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("N,H,V", SHAPES)
def test_fp32_matches_reference(N, H, V, with_bias, eps, impl):
    _check(N, H, V, torch.float32, with_bias, eps, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("eps", [0.0, 0.1], ids=["ls0", "ls0.1"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_16bit_matches_reference(dtype, eps, impl):
    _check(37, 32, 1031, dtype, True, eps, impl, seed=1)


@pytest.mark.parametrize("impl", IMPLS)
def test_all_labels_ignored_gives_zero_loss_and_grads(impl):
    hidden, weight, bias, _ = _make(5, 32, 1031, torch.float32, True, seed=2)
    labels = torch.full((5,), IGNORE, device=DEVICE)
    (loss, token_losses), grads = _loss_and_grads(fused_linear_cross_entropy, hidden, weight, bias, labels,
                                                  impl=impl, return_token_losses=True)
    assert loss.item() == 0.0 and (token_losses == 0).all()
    for g in grads:
        assert torch.isfinite(g).all() and (g == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_tied_embedding_gradient_adds_up(impl):
    """One Parameter is both the input embedding and the LM head; its .grad must equal the
    reference's sum of the lookup gradient and the head gradient."""
    N, H, V = 23, 32, 1031
    g = torch.Generator().manual_seed(3)
    emb0 = torch.randn(V, H, generator=g) / H ** 0.5
    proj0 = torch.randn(H, H, generator=g) / H ** 0.5
    ids = torch.randint(0, V, (N,), generator=g)
    ids[:4] = ids[4]  # repeated tokens: several lookup gradients land on one row
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::5] = IGNORE
    results = []
    for fn, kw in ((fused_linear_cross_entropy, dict(impl=impl, chunk_size=8)), (lm_head_ce_reference, {})):
        emb = torch.nn.Parameter(emb0.clone())
        proj = torch.nn.Parameter(proj0.clone())
        hidden = torch.tanh(F.embedding(ids, emb) @ proj)
        loss = fn(hidden, emb, labels, **kw)
        loss.backward()
        results.append((loss.detach(), emb.grad, proj.grad))
    (loss, emb_grad, proj_grad), (ref_loss, ref_emb_grad, ref_proj_grad) = results
    assert_close_table("loss", loss, ref_loss, torch.float32)
    assert_close_table("tied emb grad", emb_grad, ref_emb_grad, torch.float32)
    assert_close_table("proj grad", proj_grad, ref_proj_grad, torch.float32)
    # The lookup must contribute to emb.grad, or the comparison would not test accumulation.
    emb = emb0.clone().requires_grad_()
    hidden = torch.tanh(F.embedding(ids, emb0) @ proj0)
    (head_only,) = torch.autograd.grad(lm_head_ce_reference(hidden, emb, labels), [emb])
    assert (ref_emb_grad - head_only).abs().max() > 1e-3


def test_defaults_auto_impl_and_chunk_size():
    assert ce._default_chunk_size(4096, 768, 250_002) == 1024  # floor wins over Liger's 16 rows
    assert ce._default_chunk_size(37, 32, 1031) == 37  # never more rows than there are
    assert ce._default_chunk_size(65536, 4096, 32000) == 8389  # same-size rule: ceil(65536*4096/32000)
    hidden, weight, bias, labels = _make(37, 32, 1031, torch.float32, True, seed=4)
    loss = fused_linear_cross_entropy(hidden, weight, labels, bias)
    ref = lm_head_ce_reference(hidden, weight, labels, bias)
    assert_close_table("loss", loss, ref, torch.float32)


def test_no_grad_and_errors():
    hidden, weight, _, labels = _make(37, 32, 1031, torch.float32, False, seed=5)
    with torch.no_grad():
        loss = fused_linear_cross_entropy(hidden, weight, labels, impl="torch", chunk_size=CHUNK)
    assert_close_table("no-grad loss", loss, lm_head_ce_reference(hidden, weight, labels), torch.float32)
    bad = labels.clone()
    bad[1] = 1031
    with pytest.raises(ValueError, match="outside"):
        fused_linear_cross_entropy(hidden, weight, bad, impl="torch")
    with pytest.raises(ValueError, match="impl"):
        fused_linear_cross_entropy(hidden, weight, labels, impl="cuda")
    h = hidden.clone().requires_grad_()
    loss = fused_linear_cross_entropy(h, weight, labels, impl="torch")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_row_kernel_compiles_for_h100():
    """The CUDA path cannot run here; compiling the row kernel for sm_90 checks that it builds."""
    run_without_interpreter(COMPILE_SM90_PRELUDE + """
import swcm_kernels.lm_head_ce as C
assert not C._INTERPRETED
sig = dict(LOGITS=None, stride_row="i32", LABELS="*i64", LOSSES="*fp32", inv_n_valid="fp32", n_cols="i32",
           ignore_index="i32", label_smoothing="fp32")
for dt in ("fp32", "bf16"):
    for smoothing in (False, True):
        compile_sm90(C._ce_rows_kernel, {**sig, "LOGITS": "*" + dt},
                     dict(HAS_SMOOTHING=smoothing, ROUND_BF16=False, BLOCK_V=C._BLOCK_V), num_warps=C._NUM_WARPS)
print("OK")
""")


@pytest.mark.parametrize("impl", IMPLS)
def test_frozen_weight_gets_no_gradient(impl):
    """Only the gradients autograd asks for are computed: a frozen head gives grad hidden only."""
    hidden, weight, _, labels = _make(37, 32, 1031, torch.float32, False, seed=6)
    h = hidden.clone().requires_grad_()
    loss = fused_linear_cross_entropy(h, weight, labels, impl=impl, chunk_size=CHUNK)
    loss.backward()
    assert weight.grad is None
    h_ref = hidden.clone().requires_grad_()
    lm_head_ce_reference(h_ref, weight, labels).backward()
    assert_close_table("grad hidden", h.grad, h_ref.grad, torch.float32)
