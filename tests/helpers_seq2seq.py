"""Tiny Hugging Face seq2seq models built with transformers alone (no swcm file in their directories), for the tests
of launch/evaluate.py on models other than SWCM."""

import json
from pathlib import Path

import torch


def build_encoder_decoder(out: Path, tokenizer, seed: int = 0) -> Path:
    """An EncoderDecoderModel of two 2-layer XLM-R stacks (hidden 32) with `tokenizer` (which has the <xx> tags),
    starting the decoder with <s>, as the HF warm start does."""
    from transformers import EncoderDecoderModel, XLMRobertaConfig, XLMRobertaForCausalLM, XLMRobertaModel

    common = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=300, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, type_vocab_size=1)
    torch.manual_seed(seed)
    encoder = XLMRobertaModel(XLMRobertaConfig(**common), add_pooling_layer=False)
    decoder = XLMRobertaForCausalLM(XLMRobertaConfig(**common, is_decoder=True, add_cross_attention=True))
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = tokenizer.bos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.decoder_start_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def mbart50_tokenizer(demo_tokenizer_dir: Path):
    """An mBART-50 tokenizer (its 52 language codes: zh_CN, kk_KZ, mn_MN, ...; no Tibetan or Uyghur) over the demo
    sentencepiece vocabulary."""
    from transformers import MBart50Tokenizer

    spec = json.loads((Path(demo_tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = [(piece, score) for piece, score in spec["model"]["vocab"]]
    return MBart50Tokenizer(vocab=vocab)


def build_mbart(out: Path, tokenizer, seed: int = 0) -> Path:
    """A 1 + 1 layer MBartForConditionalGeneration (d_model 32) with `tokenizer`; the decoder starts with </s> and
    the target's language code comes next, as mBART-50 does."""
    from transformers import MBartConfig, MBartForConditionalGeneration

    config = MBartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                         max_position_embeddings=300, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id or 0, eos_token_id=tokenizer.eos_token_id,
                         decoder_start_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    MBartForConditionalGeneration(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
