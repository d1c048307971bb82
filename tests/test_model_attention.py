"""Attention implementations agree; the loss is what the trainer expects; gradients reach every part."""

import pytest
import torch
import torch.nn.functional as F
from helpers_model import padded_batch, random_xlmr, swcm_from_xlmr, tiny_xlmr_config

import swcm.modeling_swcm as modeling
from swcm.modeling_swcm import attention
from swcm.seq2seq_layout import IGNORE_INDEX

HAS_FLASH = modeling.triton_attention_unavailable() is None


def _model(**overrides):
    return swcm_from_xlmr(random_xlmr(tiny_xlmr_config()), normal_layer_every=1, **overrides)


def test_eager_and_sdpa_agree_with_padding():
    model = _model(fused_lm_head_ce=False)
    batch = padded_batch()
    outs = {}
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            outs[impl] = model(**batch)
    assert (outs["eager"].logits - outs["sdpa"].logits).abs().max().item() < 1e-5
    assert abs(outs["eager"].loss.item() - outs["sdpa"].loss.item()) < 1e-5
    # The padding masks matter: ignoring them changes the logits of the padded rows' real tokens.
    with torch.no_grad():
        unmasked = model(**{**batch, "attention_mask": None}).logits
    assert (unmasked[1] - outs["sdpa"].logits[1]).abs().max().item() > 1e-4


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_causal_attention_with_cache_is_bottom_right_aligned(impl):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 5:] = False
    full = attention(q, k, v, key_padding_mask=keep, causal=True, impl=impl)
    last3 = attention(q[:, :, 4:], k, v, key_padding_mask=keep, causal=True, impl=impl)
    assert torch.allclose(full[:, :, 4:], last3, atol=1e-6)
    # Reference for query 0: it sees key 0 only.
    assert torch.allclose(full[:, :, 0], v[:, :, 0], atol=1e-6)


def test_unknown_impl_and_missing_triton_kernel_are_clear_errors(monkeypatch):
    q = torch.randn(1, 1, 2, 32)
    with pytest.raises(ValueError, match="unknown attn_implementation"):
        attention(q, q, q, impl="flash")
    monkeypatch.setattr(modeling, "_load_kernel", lambda name: (None, "hidden by the test"))
    with pytest.raises(ImportError, match="'attention' cannot be imported: hidden by the test"):
        attention(q, q, q, impl="triton")


@pytest.mark.skipif(not HAS_FLASH, reason="swcm_kernels.attention not available")
def test_triton_matches_sdpa_and_trains_with_attention_dropout():
    # head dim 32 (the kernel supports 32/64/128); runs under TRITON_INTERPRET=1 on CPU (conftest).
    xlmr = random_xlmr(tiny_xlmr_config(hidden_size=64, num_attention_heads=2, intermediate_size=64,
                                        num_hidden_layers=1, hidden_dropout_prob=0.0))
    model = swcm_from_xlmr(xlmr, normal_layer_every=1, fused_lm_head_ce=False)
    batch = padded_batch()
    with torch.no_grad():
        ref = model(**batch).logits
        model.set_attn_implementation("triton")
        got = model(**batch).logits
    assert (got - ref).abs().max().item() < 1e-4
    model.train()  # attention_probs_dropout_prob = 0.1 from XLM-R's config: the kernel drops probabilities itself
    runs = []
    for _ in range(2):
        torch.manual_seed(5)   # the kernel's seed comes from torch's generator
        runs.append(model(**batch).logits)
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], got, atol=1e-3)


def test_auto_is_triton_on_cuda_and_sdpa_elsewhere():
    assert modeling.resolve_attn_implementation("auto", torch.device("cuda", 0)) == (
        "triton" if HAS_FLASH else "sdpa")
    assert modeling.resolve_attn_implementation("auto", "cpu") == "sdpa"
    assert modeling.resolve_attn_implementation("eager", "cuda") == "eager"
    model = _model(fused_lm_head_ce=False)
    batch = padded_batch()
    with torch.no_grad():
        sdpa = model(**batch).logits
        model.set_attn_implementation("auto")
        assert torch.equal(model(**batch).logits, sdpa)


def test_loss_token_losses_and_empty_batches():
    model = _model(fused_lm_head_ce=False, label_smoothing=0.1)
    batch = padded_batch()
    out = model(**batch)
    scored = batch["labels"].ne(IGNORE_INDEX)
    expected = F.cross_entropy(out.logits[scored], batch["labels"][scored], label_smoothing=0.1, reduction="none")
    assert torch.allclose(out.token_losses[scored], expected, atol=1e-6)
    assert out.token_losses.dtype == torch.float32 and not out.token_losses.requires_grad
    assert torch.count_nonzero(out.token_losses[~scored]) == 0
    assert torch.allclose(out.loss, expected.mean(), atol=1e-6)
    # No scored token: the loss is 0 (never NaN) and backward still works.
    empty = model(**{**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX)})
    assert empty.loss.item() == 0.0 and torch.count_nonzero(empty.token_losses) == 0
    empty.loss.backward()


def test_fused_head_loss_matches_plain_and_skips_logits():
    model = _model(label_smoothing=0.1)
    batch = padded_batch()
    fused = model(**batch)
    model.config.fused_lm_head_ce = False
    plain = model(**batch)
    assert fused.logits is None and plain.logits is not None
    assert torch.allclose(fused.loss, plain.loss, atol=1e-5)
    assert torch.allclose(fused.token_losses, plain.token_losses, atol=1e-5)
    grads = [torch.autograd.grad(o.loss, model.get_input_embeddings().weight)[0] for o in (fused, plain)]
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _model(fused_lm_head_ce=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    batch = padded_batch()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad()
        model(**batch).loss.backward()
        grads.append(model.decoder.layers[0].ffn1.intermediate.dense.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_overfits_one_batch():
    # The plain head: the fused kernel runs under the Triton interpreter in this suite (slow); it is compared
    # with the plain head, gradients included, above.
    model = _model(fused_lm_head_ce=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    batch = padded_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        if not losses:  # gradients reach the custom layers, the cross-attention and the tied embedding/head
            for p in (model.decoder.layers[0].ffn2.output.dense.weight,
                      model.decoder.layers[0].crossattention.self.key.weight,
                      model.get_input_embeddings().weight, model.lm_head.bias):
                assert p.grad is not None and p.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
