"""The seq2seq batch layout: the one definition used by the data loader, `swcm.seq2seq_inputs`, the model and
the exported checkpoints (this file travels with them, so it imports torch only).

    encoder            <s> <src_lang> x </s>
    labels             <tgt_lang> y </s>        the target-language tag is the first label token and is scored
                                                (mBART-50's convention): a model learns to emit it after <s>
    decoder_input_ids  <s> <tgt_lang> y         the labels shifted right behind <s> (decoder_start_token_id), as
                                                BART derives them (`shift_right`)

Right padding: pad id in the inputs, 0 in the masks, IGNORE_INDEX in the labels. On the decoder side a position
is a token iff it is the first one or the label before it is scored (`decoder_mask_from_labels`), so the mask
follows from the labels alone and a batch needs nothing but `input_ids`, `attention_mask` and `labels`.
"""

from __future__ import annotations

from typing import Sequence

import torch

IGNORE_INDEX = -100     # the label value the loss skips (torch's cross_entropy default)
ENCODER_SPECIALS = 3    # <s> <src_lang> ... </s>
DECODER_SPECIALS = 2    # labels <tgt_lang> ... </s>; decoder_input_ids <s> <tgt_lang> ... (same length)


def encoder_ids(bos: int, src_tag: int, x: Sequence[int], eos: int) -> list[int]:
    """The encoder sequence `<s> <src_lang> x </s>`."""
    return [bos, src_tag, *x, eos]


def label_ids(tgt_tag: int, y: Sequence[int], eos: int) -> list[int]:
    """The labels `<tgt_lang> y </s>` (unpadded)."""
    return [tgt_tag, *y, eos]


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """decoder_input_ids for `labels` (B, T): `start_id` then the labels moved one position right, with every
    IGNORE_INDEX turned into `pad_id` (BART's `shift_tokens_right`)."""
    out = labels.new_full(labels.shape, pad_id)
    out[:, 0] = start_id
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill_(out == IGNORE_INDEX, pad_id)


def decoder_mask_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """decoder_attention_mask (B, T) of 0/1 longs for the inputs `shift_right(labels)`: 1 at the first position
    and wherever the previous label is scored."""
    mask = torch.ones_like(labels)
    mask[:, 1:] = labels[:, :-1].ne(IGNORE_INDEX)
    return mask


def scored(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (B, T): the label positions the loss counts."""
    return labels.ne(IGNORE_INDEX)
