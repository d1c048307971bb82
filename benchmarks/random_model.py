"""A randomly initialised SWCM model of a chosen size with the demo tokenizer, saved as an HF directory (an export:
config with auto_map, modeling file, safetensors, tokenizer), for the training benchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path


def build_random_swcm(model_dir: Path, *, layers: int, vocab: int, hidden: int = 768, heads: int = 12,
                      ffn: int = 3072, dropout: float = 0.1, seed: int = 0) -> int:
    """Save (atomically) a random SWCM model (`layers` encoder layers, a normal decoder layer after every 3 custom ones, tied
    head, `vocab` embedding rows) with the demo tokenizer plus the language tags to `model_dir`, unless it is
    there already; returns its parameter count. The demo tokenizer uses only the first ~8,000 rows of a larger
    embedding, which changes no cost: every row is trained and every logit computed."""
    import torch
    from transformers import AutoTokenizer

    from swcm.assets import build_demo_tokenizer
    from swcm.modeling_swcm import SWCMConfig, SWCMForConditionalGeneration
    from swcm.tokenization import DEFAULT_LANG_CODES, add_language_tags

    model_dir = Path(model_dir)
    if (model_dir / "config.json").exists():
        config = SWCMConfig.from_pretrained(str(model_dir))
        with torch.device("meta"):
            return sum(p.numel() for p in SWCMForConditionalGeneration(config).parameters())
    staging = model_dir.with_name(model_dir.name + ".partial")   # renamed into place once complete
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    build_demo_tokenizer(staging / "tokenizer", vocab_size=8000)
    tok = AutoTokenizer.from_pretrained(str(staging / "tokenizer"))
    ids = add_language_tags(tok, DEFAULT_LANG_CODES)
    if vocab < len(tok):
        raise ValueError(f"--vocab {vocab}: the demo tokenizer with its language tags has {len(tok)} tokens")
    config = SWCMConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, normal_layer_every=3, lang_codes=list(DEFAULT_LANG_CODES),
                        lang_token_ids=ids, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    model = SWCMForConditionalGeneration(config)
    model.save_pretrained(str(staging / "model"))
    tok.save_pretrained(str(staging / "model"))
    (staging / "model").rename(model_dir)
    shutil.rmtree(staging)
    return sum(p.numel() for p in model.parameters())
