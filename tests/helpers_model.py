"""Small builders shared by the model and conversion tests (tiny shapes: everything runs in seconds on a CPU)."""

from __future__ import annotations

import torch
from transformers import XLMRobertaConfig, XLMRobertaModel

from swcm.convert.from_encoder import from_hf
from swcm.modeling_swcm import SWCMConfig, SWCMForConditionalGeneration
from swcm.seq2seq_layout import IGNORE_INDEX, decoder_mask_from_labels, shift_right

PAD = 1


def tiny_xlmr_config(**overrides) -> XLMRobertaConfig:
    """A random-weights-sized XLM-R config: vocab 97 (odd on purpose), hidden 32, 2 layers, 4 heads."""
    fields = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=64, type_vocab_size=1, pad_token_id=PAD, bos_token_id=0, eos_token_id=2)
    fields.update(overrides)
    return XLMRobertaConfig(**fields)


def random_xlmr(config: XLMRobertaConfig, seed: int = 0) -> XLMRobertaModel:
    """An XLMRobertaModel (no pooler) with random weights, LayerNorms included (not left at 1/0), in eval mode."""
    torch.manual_seed(seed)
    model = XLMRobertaModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def swcm_from_xlmr(xlmr: XLMRobertaModel, seed: int = 1, **config_overrides) -> SWCMForConditionalGeneration:
    """An SWCM model whose encoder holds `xlmr`'s weights (strictly, through the from_hf key map) and whose
    decoder is initialised per config (in memory; the converter does the same plus tags and files)."""
    config = SWCMConfig.from_encoder_config(xlmr.config, **config_overrides)
    torch.manual_seed(seed)
    model = SWCMForConditionalGeneration(config).eval()
    state = from_hf(xlmr.state_dict())
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("encoder.")]
    model.init_decoder_from_encoder()
    return model


def padded_batch(vocab_size: int = 97, seed: int = 0):
    """Encoder ids and labels with right padding of different lengths, decoder inputs and masks derived from the
    labels (swcm.seq2seq_layout: labels `<tag> y </s>`, IGNORE_INDEX at pads)."""
    g = torch.Generator().manual_seed(seed)
    src_lens, tgt_lens = [9, 5, 7], [6, 8, 3]
    input_ids = torch.full((3, max(src_lens)), PAD)
    labels = torch.full((3, max(tgt_lens)), IGNORE_INDEX)
    for b, (s, t) in enumerate(zip(src_lens, tgt_lens)):
        input_ids[b, :s] = torch.randint(3, vocab_size, (s,), generator=g)
        input_ids[b, 0], input_ids[b, s - 1] = 0, 2
        labels[b, :t] = torch.randint(3, vocab_size, (t,), generator=g)
        labels[b, t - 1] = 2
    return dict(input_ids=input_ids, attention_mask=input_ids.ne(PAD).long(),
                decoder_input_ids=shift_right(labels, 0, PAD), decoder_attention_mask=decoder_mask_from_labels(labels),
                labels=labels)
