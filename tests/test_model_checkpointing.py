"""Activation checkpointing (`model.gradient_checkpointing` in a run config): in training mode, with dropout on,
it gives the same loss and gradients as the plain model while keeping far fewer activations for the backward."""

import pytest
import torch

from tests.helpers_model import padded_batch, random_xlmr, swcm_from_xlmr, tiny_xlmr_config

pytestmark = pytest.mark.slow   # forward/backward twice over a 256-wide model


def _run(checkpointing: bool):
    """Loss, gradients and bytes saved for the backward (outside recomputed regions) of one training step."""
    model = swcm_from_xlmr(random_xlmr(tiny_xlmr_config(num_hidden_layers=3)), normal_layer_every=2).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    torch.manual_seed(123)  # the same dropout masks in both runs (checkpointing replays the RNG state)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**padded_batch())
    out.loss.backward()
    return out.loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, saved[0]


def test_checkpointing_keeps_loss_and_gradients_and_saves_fewer_activations():
    loss, grads, saved = _run(False)
    loss_ckpt, grads_ckpt, saved_ckpt = _run(True)
    assert loss_ckpt == loss
    assert grads_ckpt.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)
    # Only each layer's inputs are kept: the attention/FFN intermediates of 3 encoder + 5 decoder layers are not.
    assert saved_ckpt < 0.3 * saved, (saved_ckpt, saved)
