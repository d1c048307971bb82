"""Seq2seq batches in the XLM-SWCM convention, built the same way by tests, fine-tuning and users.

    encoder            <s> <src_lang> x </s>
    decoder sequence   <s> <tgt_lang> y </s>
    decoder_input_ids  <s> <tgt_lang> y          (all but the last token: teacher forcing)
    labels             <tgt_lang> y </s>         (all but the first), with <tgt_lang> set to -100: generation is
                                                  given `<s> <tgt_lang>` as its prefix, so the tag is never predicted.
Padding is on the right: pad id in the inputs, 0 in the masks, -100 in the labels.
"""

from __future__ import annotations

from typing import Sequence

import torch

from swcm.tokenization import lang_tag

IGNORE_INDEX = -100


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

    enc = [[bos, _tag_id(tokenizer, c)] + body(t) + [eos] for t, c in zip(src_texts, src_codes)]
    input_ids = _pad(enc, pad)
    batch = {"input_ids": input_ids, "attention_mask": input_ids.ne(pad).long()}
    if tgt_texts is None:
        batch["decoder_input_ids"] = torch.tensor([[bos, _tag_id(tokenizer, c)] for c in tgt_codes])
        batch["decoder_attention_mask"] = torch.ones_like(batch["decoder_input_ids"])
        return batch
    if len(tgt_texts) != n:
        raise ValueError(f"{n} source texts but {len(tgt_texts)} target texts")

    full = [[bos, _tag_id(tokenizer, c)] + body(t) + [eos] for t, c in zip(tgt_texts, tgt_codes)]
    decoder_input_ids = _pad([seq[:-1] for seq in full], pad)
    labels = _pad([[IGNORE_INDEX] + seq[2:] for seq in full], IGNORE_INDEX)
    batch.update(decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_input_ids.ne(pad).long(),
                 labels=labels)
    return batch
