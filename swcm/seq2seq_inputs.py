"""Tokenised seq2seq batches in the layout of `swcm.seq2seq_layout`, for tests, fine-tuning, evaluation and users.

The data loader builds the same tensors from token ids (`swcm.data.batching.collate`); a test checks that both
builders agree on the same example.
"""

from __future__ import annotations

from typing import Sequence

import torch

from swcm.seq2seq_layout import (IGNORE_INDEX, decoder_mask_from_labels, encoder_ids, label_ids,
                                 shift_right)
from swcm.tokenization import lang_tag


def _per_example(value: str | Sequence[str], n: int, what: str) -> list[str]:
    codes = [value] * n if isinstance(value, str) else list(value)
    if len(codes) != n:
        raise ValueError(f"{what}: expected one language code or {n}, got {len(codes)}")
    return codes


def _tag_id(tokenizer, code: str) -> int:
    tag = lang_tag(code)
    if tag not in tokenizer.get_vocab():
        raise ValueError(f"language tag {tag} is not in the tokenizer (add it with swcm.tokenization.add_language_tags)")
    return tokenizer.convert_tokens_to_ids(tag)


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def build_seq2seq_inputs(tokenizer, src_texts: Sequence[str], tgt_texts: Sequence[str] | None,
                         src_lang: str | Sequence[str], tgt_lang: str | Sequence[str], max_len: int = 256
                         ) -> dict[str, torch.Tensor]:
    """Tokenise a batch into `input_ids`, `attention_mask`, `decoder_input_ids`, `decoder_attention_mask` and
    `labels` (LongTensors, right-padded). Languages are one code for the batch or one per example.

    Texts are truncated so that the encoder sequence and the full decoder sequence `<s> <tag> y </s>` each hold
    at most `max_len` tokens. Without `tgt_texts` (generation), the decoder part is the prefix `<s> <tgt_lang>`
    and there are no labels.
    """
    if max_len < 4:
        raise ValueError(f"max_len must leave room for <s>, a tag, a token and </s>; got {max_len}")
    n = len(src_texts)
    src_codes, tgt_codes = _per_example(src_lang, n, "src_lang"), _per_example(tgt_lang, n, "tgt_lang")
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id

    def body(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"][: max_len - 3]

    input_ids = _pad([encoder_ids(bos, _tag_id(tokenizer, c), body(t), eos) for t, c in zip(src_texts, src_codes)],
                     pad)
    batch = {"input_ids": input_ids, "attention_mask": input_ids.ne(pad).long()}
    if tgt_texts is None:
        batch["decoder_input_ids"] = torch.tensor([[bos, _tag_id(tokenizer, c)] for c in tgt_codes])
        batch["decoder_attention_mask"] = torch.ones_like(batch["decoder_input_ids"])
        return batch
    if len(tgt_texts) != n:
        raise ValueError(f"{n} source texts but {len(tgt_texts)} target texts")
    labels = _pad([label_ids(_tag_id(tokenizer, c), body(t), eos) for t, c in zip(tgt_texts, tgt_codes)],
                  IGNORE_INDEX)
    batch.update(decoder_input_ids=shift_right(labels, bos, pad), decoder_attention_mask=decoder_mask_from_labels(labels),
                 labels=labels)
    return batch
