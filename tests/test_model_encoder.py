"""The SWCM encoder is XLM-R: same parameter names, same numbers, for XLMRobertaModel and MaskedLM checkpoints."""

import pytest
import torch
from helpers_model import padded_batch, random_xlmr, swcm_from_xlmr, tiny_xlmr_config
from transformers import XLMRobertaForMaskedLM

from swcm.convert import ConversionError
from swcm.convert.from_encoder import from_hf


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_encoder_matches_xlmr_on_padded_batch(impl):
    xlmr = random_xlmr(tiny_xlmr_config(num_hidden_layers=3))
    model = swcm_from_xlmr(xlmr)
    xlmr.set_attn_implementation(impl)
    model.set_attn_implementation(impl)
    batch = padded_batch()
    with torch.no_grad():
        ref = xlmr(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        ours = model.get_encoder()(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    err = (ours - ref).abs().max().item()
    assert err < 1e-5, f"{impl}: max |ours - XLM-R| = {err:.2e}"
    # Padding changes the result (the mask is applied): the same row without its padding keys differs.
    assert batch["attention_mask"][1].eq(0).any()


def test_masked_lm_checkpoint_maps_encoder_and_drops_mlm_head():
    config = tiny_xlmr_config()
    torch.manual_seed(0)
    mlm = XLMRobertaForMaskedLM(config)
    hf = dict(mlm.state_dict())
    hf["roberta.pooler.dense.weight"] = torch.zeros(32, 32)  # some checkpoints carry a pooler: skipped too
    mapped = from_hf(hf)
    model = swcm_from_xlmr(random_xlmr(config))
    encoder_keys = {k for k in model.state_dict() if k.startswith("encoder.")}
    assert set(mapped) == encoder_keys
    assert not any("lm_head" in k or "pooler" in k for k in mapped)
    for key, tensor in hf.items():
        if key.startswith("roberta.encoder.") or key.startswith("roberta.embeddings.word"):
            assert torch.equal(mapped["encoder." + key.removeprefix("roberta.")], tensor)


def test_unknown_checkpoint_key_is_a_conversion_error():
    hf = dict(random_xlmr(tiny_xlmr_config()).state_dict())
    hf["encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="not XLM-R encoder parameters"):
        from_hf(hf)


def test_position_ids_follow_roberta_and_continue_after_cache():
    model = swcm_from_xlmr(random_xlmr(tiny_xlmr_config()))
    emb = model.encoder.embeddings
    ids = torch.tensor([[0, 5, 6, 2, 1, 1]])
    seen = {}
    hook = emb.position_embeddings.register_forward_hook(lambda m, inp, out: seen.update(pos=inp[0]))
    emb(ids)
    assert seen["pos"].tolist() == [[2, 3, 4, 5, 1, 1]]  # padding_idx + running count; pads stay at padding_idx
    emb(torch.tensor([[7]]), past_length=4)
    assert seen["pos"].tolist() == [[6]]
    hook.remove()
