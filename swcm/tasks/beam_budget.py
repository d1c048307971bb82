"""How much memory a beam search needs, estimated from config.json before any model is loaded, so that a beam count
the machine cannot hold is refused with one line instead of ending in the kernel's OOM killer."""

from __future__ import annotations

FLOAT_BYTES = 4          # fp32, as generate.py runs
SCORE_COPIES = 3         # per step: the logits, their log-softmax, and the beams' running scores added to them


def beam_search_bytes(fields: dict, sequences: int, num_beams: int, source_len: int, max_new_tokens: int) -> int:
    """Bytes a beam search of `num_beams` over `sequences` sources of `source_len` tokens holds at its peak, from the
    model's config.json `fields` (vocab_size, hidden_size, decoder depth): the next-token scores of every beam over
    the vocabulary, and the decoder's key/value caches (self-attention over the generated tokens, cross-attention
    over the source). Weights and activations of one step are left out: small beside these when beams are many."""
    rows = sequences * num_beams
    layers = fields.get("decoder_layers") or fields.get("num_hidden_layers") or 1
    scores = SCORE_COPIES * rows * fields["vocab_size"] * FLOAT_BYTES
    caches = rows * layers * 2 * fields["hidden_size"] * (source_len + max_new_tokens) * FLOAT_BYTES
    return scores + caches
