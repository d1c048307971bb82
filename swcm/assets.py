"""Small real assets for the demo and the tests: a sentencepiece tokenizer trained on `data/demo/` text and a
tiny randomly initialised XLM-R checkpoint (the stand-in for XLM-R / CINO, which no hub can deliver here)."""

from __future__ import annotations

from pathlib import Path

from swcm.tokenization import train_sentencepiece_tokenizer

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"

# One file per language so the tokenizer sees every script (mn only exists as parallel text).
DEMO_TOKENIZER_FILES = (
    "mono/bo.txt", "mono/kk.txt", "mono/ug.txt", "mono/zh.txt", "parallel/ntrex128/ntrex128.train.mn",
)


def build_demo_tokenizer(out_dir: str | Path, vocab_size: int = 8000, demo_dir: str | Path = DEMO_DIR):
    """Train the demo XLM-R tokenizer on the demo corpus and save it to `out_dir`; return it."""
    files = [Path(demo_dir) / f for f in DEMO_TOKENIZER_FILES]
    return train_sentencepiece_tokenizer(files, out_dir, vocab_size=vocab_size)


def build_tiny_xlmr(out_dir: str | Path, tokenizer_dir: str | Path, *, num_hidden_layers: int = 4,
                    hidden_size: int = 64, num_attention_heads: int = 4, intermediate_size: int = 128,
                    max_position_embeddings: int = 514, seed: int = 0, masked_lm: bool = True):
    """Save a randomly initialised XLM-R (as `XLMRobertaForMaskedLM`, the layout CINO ships, or the bare
    `XLMRobertaModel`) sized to the tokenizer in `tokenizer_dir`, with that tokenizer, to `out_dir`."""
    import torch
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaModel

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, type_vocab_size=1)
    torch.manual_seed(seed)
    model = (XLMRobertaForMaskedLM if masked_lm else XLMRobertaModel)(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return model
