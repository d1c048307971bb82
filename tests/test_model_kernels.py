"""The kernels inside the full model (issue 5): the tied head's embedding gradient (fused or naive head) equals
the sum of the encoder lookup, decoder lookup and head contributions of an untied plain copy, summed in place;
attn_implementation="triton" with the fused loss matches eager attention with the naive loss (Triton
interpreter on CPU)."""

import copy

import pytest
import torch

from tests.helpers_model import padded_batch, random_xlmr, swcm_from_xlmr, tiny_xlmr_config

WORD = "encoder.embeddings.word_embeddings.weight"


def _model(**overrides):
    # Dropout off: both sides of each comparison must run the same function.
    xlmr = random_xlmr(tiny_xlmr_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                        num_attention_heads=1))  # head dim 32: a size the kernel supports
    return swcm_from_xlmr(xlmr, normal_layer_every=1, **overrides)


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _allocations_in_backward(model, batch, min_bytes):
    """How many tensors of at least min_bytes the backward of model(**batch).loss allocates (CPU)."""
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    return sum(1 for e in prof.events() if e.self_cpu_memory_usage >= min_bytes)


@pytest.mark.parametrize("fused", [True, False])
def test_tied_head_gradient_is_the_sum_of_lookup_and_head_gradients(fused):
    tied = _model()
    tied.config.fused_lm_head_ce = fused
    batch = padded_batch()
    loss_t, g_t = _grads(tied, batch)
    # The sum is made in place: the backward allocates no V x H tensor beyond the head's own gradient (which the
    # fused head makes in its forward). Autograd's own sum of sparse lookup gradients into it allocates one per lookup.
    embedding = tied.encoder.embeddings.word_embeddings.weight
    assert _allocations_in_backward(tied, batch, min_bytes=embedding.numel() * embedding.element_size()) == \
        (0 if fused else 1)

    # Untied plain copy: same weights, but the head owns a separate copy of the embedding matrix.
    untied = _model(tie_word_embeddings=False)
    untied.load_state_dict(tied.state_dict())
    with torch.no_grad():
        untied.lm_head.weight.copy_(tied.encoder.embeddings.word_embeddings.weight)
    assert untied.lm_head.weight.data_ptr() != untied.encoder.embeddings.word_embeddings.weight.data_ptr()
    untied.config.fused_lm_head_ce = False
    loss_u, g_u = _grads(untied, batch)

    assert loss_t.item() == pytest.approx(loss_u.item(), abs=1e-5)
    lookup, head = g_u[WORD], g_u["lm_head.weight"]
    assert lookup.abs().sum() > 0 and head.abs().sum() > 0  # both contributions are really there
    torch.testing.assert_close(g_t[WORD], lookup + head, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_t["lm_head.bias"], g_u["lm_head.bias"], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("order", [("head", "enc", "dec"), ("enc", "head", "dec"), ("enc", "dec", "head")])
def test_tied_gradient_sum_is_handed_over_once_whatever_the_arrival_order(order):
    from swcm.modeling_swcm import TiedEmbeddingGrad

    g = torch.Generator().manual_seed(0)
    head = torch.randn(11, 4, generator=g)
    ids = {"enc": torch.tensor([3, 5, 3]), "dec": torch.tensor([5, 0])}
    rows = {k: torch.randn(len(v), 4, generator=g) for k, v in ids.items()}
    expected = head.clone()
    for k in ids:
        expected.index_add_(0, ids[k], rows[k])

    tied = TiedEmbeddingGrad()
    for _ in order:
        tied.register()
    handed = [tied.add(dense=head.clone()) if k == "head" else tied.add(ids=ids[k], rows=rows[k]) for k in order]
    assert all(h is None for h in handed[:-1])
    torch.testing.assert_close(handed[-1], expected)


def test_triton_attention_and_fused_loss_match_eager_and_naive_loss(monkeypatch):
    pytest.importorskip("triton")
    from swcm_kernels.triton_support import triton_interpreter_state
    from swcm_kernels.attention import FlashAttentionFunction

    calls = []
    original = FlashAttentionFunction.apply
    monkeypatch.setattr(FlashAttentionFunction, "apply", lambda *a: calls.append(1) or original(*a))

    if not torch.cuda.is_available() and triton_interpreter_state() != (True, True):
        pytest.skip("needs TRITON_INTERPRET=1 set before triton is imported (tests/conftest.py does it)")
    ref = _model()
    ref.set_attn_implementation("eager")
    ref.config.fused_lm_head_ce = False
    fast = copy.deepcopy(ref)
    fast.set_attn_implementation("triton")
    fast.config.fused_lm_head_ce = True
    batch = padded_batch()
    loss_r, g_r = _grads(ref, batch)
    loss_f, g_f = _grads(fast, batch)
    # encoder self-attention, decoder self- and cross-attention in every layer went through the kernel
    assert len(calls) == ref.config.num_hidden_layers + 2 * ref.config.decoder_layers
    assert fast(**batch).logits is None  # the fused path never builds logits
    assert loss_f.item() == pytest.approx(loss_r.item(), abs=2e-5)
    assert g_f.keys() == g_r.keys()
    for name in g_r:
        torch.testing.assert_close(g_f[name], g_r[name], atol=5e-5, rtol=1e-3, msg=name)
