"""How a seq2seq model wants its source, target and languages laid out, for any `AutoModelForSeq2SeqLM`.

Three conventions cover SWCM, the Hugging Face warm start, mBART-50, NLLB, M2M100 and mT5 (x and y are the source
and target pieces, `start` the model's `decoder_start_token_id`):

    kind    encoder              decoder input        labels (scored: y </s>)     models
    tags    <s> <src> x </s>     start <tgt> y        -    y </s>                 SWCM, the warm start (`<bo>` ...)
    codes   src_code x </s>      start tgt_code y     -    y </s>                 mBART-50, NLLB, M2M100 (`bo_CN`, ...)
    none    x </s>               start y              y </s>                      mT5, one-language models

The target-language token is given to the decoder (as generation gives it: the prefix `start <tgt>`, i.e. a forced
BOS token) and never scored: it is not part of the reference, and every model is scored on the same tokens of y.
Truncation keeps each side within `max_len` tokens, so for `tags` the tensors equal `swcm.seq2seq_inputs`'s (with
the tag's label masked; tested). mBART-25's layout (the code after `</s>`) is not one of these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Collection, Sequence

import torch

from swcm.seq2seq_layout import IGNORE_INDEX, decoder_mask_from_labels, shift_right
from swcm.tokenization import lang_tag

TAGS, CODES, NONE = "tags", "codes", "none"
# What a language tag or code looks like (<bo>, __bo__, bo_CN, bod_Tibt): a tokenizer with any such token marks
# languages, so a language it cannot mark is an error rather than the `none` layout.
_LANGUAGE_TOKEN = re.compile(r"<[a-z]{2,3}>|__[a-z]{2,3}__|[a-z]{2,3}_[A-Z][A-Za-z]{1,3}")


class LayoutError(ValueError):
    """The model's tokenizer cannot mark a language the data uses; the message names the code, `code` holds it
    (None for a bad --lang-map token)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Layout:
    """One of the conventions above, with the token ids of one tokenizer and model config."""
    tokenizer: object
    kind: str
    decoder_start: int
    lang_ids: dict[str, int] = field(default_factory=dict)   # language code -> its tag or code token (not for none)

    def languages(self) -> Collection[str] | None:
        """The language codes this layout can mark; None for `none`, which marks no language (any code goes)."""
        return None if self.kind == NONE else set(self.lang_ids)

    def _head(self, src_lang: str) -> list[int]:
        if self.kind == NONE:
            return []
        bos = [self.tokenizer.bos_token_id] if self.kind == TAGS and self.tokenizer.bos_token_id is not None else []
        return [*bos, self.lang_ids[src_lang]]

    def prefix(self, tgt_lang: str) -> list[int]:
        """The decoder tokens before the first scored one: start, then the target's tag or code (if any); as long for
        every language."""
        return [self.decoder_start, *([] if self.kind == NONE else [self.lang_ids[tgt_lang]])]

    def _pieces(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def inputs(self, sources: Sequence[str], targets: Sequence[str] | None, src_langs: Sequence[str],
               tgt_langs: Sequence[str], max_len: int = 256) -> dict[str, torch.Tensor]:
        """`input_ids`, `attention_mask`, `decoder_input_ids`, `decoder_attention_mask` and (with `targets`)
        `labels`, right-padded LongTensors. The decoder input is the labels (language token included) shifted right
        behind `decoder_start`, as `swcm.seq2seq_layout.shift_right` derives it for training; without `targets` it is
        the prefix alone (generation)."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        enc = []
        for pieces, lang in zip(self._pieces(sources), src_langs, strict=True):
            head = self._head(lang)
            enc.append(head + pieces[:max_len - len(head) - 1] + [eos])
        batch = {"input_ids": _pad(enc, pad)}
        batch["attention_mask"] = _pad([[1] * len(r) for r in enc], 0)
        prefixes = [self.prefix(lang) for lang in tgt_langs]
        if targets is None:
            batch["decoder_input_ids"] = _pad(prefixes, pad)
            batch["decoder_attention_mask"] = _pad([[1] * len(p) for p in prefixes], 0)
            return batch
        full = []   # the labels with the target's language token, which the decoder input is shifted from
        for pieces, prefix in zip(self._pieces(targets), prefixes, strict=True):
            full.append(prefix[1:] + pieces[:max_len - len(prefix) - 1] + [eos])
        full = _pad(full, IGNORE_INDEX)
        batch["decoder_input_ids"] = shift_right(full, self.decoder_start, pad)
        batch["decoder_attention_mask"] = decoder_mask_from_labels(full)
        batch["labels"] = full.clone()
        batch["labels"][:, :len(prefixes[0]) - 1] = IGNORE_INDEX   # the language token is given, not scored
        return batch


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def tags_layout(tokenizer, codes: Collection[str], decoder_start: int | None = None) -> Layout:
    """The `tags` layout of an SWCM tokenizer (or any with `<code>` tokens) for `codes`; the decoder starts with
    `<s>` unless `decoder_start` says otherwise."""
    vocab = tokenizer.get_vocab()
    missing = [c for c in codes if lang_tag(c) not in vocab]
    if missing:
        raise LayoutError(f"language tag {lang_tag(missing[0])} is not in the tokenizer", missing[0])
    start = tokenizer.bos_token_id if decoder_start is None else decoder_start
    return Layout(tokenizer, TAGS, start, {c: vocab[lang_tag(c)] for c in codes})


def _code_token(code: str, specials: Sequence[str]) -> str | None:
    """The language-code token for `code` among `specials`: `__bo__` (M2M100) or the one token `bo_*` (mBART-50's
    `bo_CN`, NLLB's `bod_Tibt` when the code is `bod`). None when there is none; LayoutError when several fit."""
    fits = [t for t in specials if t == f"__{code}__" or t.startswith(f"{code}_")]
    if len(fits) > 1:
        raise LayoutError(f"language {code!r}: several tokens could mark it ({', '.join(sorted(fits))}); choose one "
                          f"with --lang-map {code}=TOKEN", code)
    return fits[0] if fits else None


def find_layout(tokenizer, decoder_start: int, codes: Collection[str], lang_map: dict[str, str] | None = None
                ) -> Layout:
    """The layout of a model whose tokenizer is `tokenizer`, for the language `codes` the data uses:
    `lang_map` (code -> token) if given, else `tags` when every code has a `<code>` token, else `codes` when every
    code has a language-code token (`_code_token`), else `none` when the tokenizer has no token that looks like a
    language tag or code. LayoutError names a code it cannot mark otherwise, or a `lang_map` token the vocabulary
    lacks."""
    vocab = tokenizer.get_vocab()
    if lang_map:
        unknown = [(c, t) for c, t in lang_map.items() if t not in vocab]
        if unknown:
            raise LayoutError(f"--lang-map {unknown[0][0]}={unknown[0][1]}: no such token in the tokenizer")
        missing = sorted(set(codes) - set(lang_map))
        if missing:
            raise LayoutError(f"language {missing[0]!r} is not in --lang-map", missing[0])
        return Layout(tokenizer, CODES, decoder_start, {c: vocab[t] for c, t in lang_map.items()})
    if all(lang_tag(c) in vocab for c in codes):
        return tags_layout(tokenizer, codes, decoder_start)
    specials = list(dict.fromkeys([*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()]))
    found = {c: _code_token(c, specials) for c in codes}
    if all(found.values()):
        return Layout(tokenizer, CODES, decoder_start, {c: vocab[t] for c, t in found.items()})
    own = {t for t in tokenizer.special_tokens_map.values() if isinstance(t, str)}   # <s>, <pad>, <unk>: not languages
    speaks = [t for t in specials if _LANGUAGE_TOKEN.fullmatch(t) and t not in own]
    if not speaks:
        return Layout(tokenizer, NONE, decoder_start)
    code = next(c for c, t in found.items() if not t)
    raise LayoutError(f"language {code!r}: the tokenizer marks languages ({', '.join(speaks[:3])}, ...) but has no "
                      f"<{code}>, __{code}__ or {code}_* token (name one with --lang-map {code}=TOKEN)", code)
