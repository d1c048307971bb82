"""Token-budget micro-batches with length bucketing, and collation into the trainer's batch dict.

The batch contract (fixed; the trainer is written against it), B samples, S and T multiples of pad_to_multiple,
in the layout of `swcm.seq2seq_layout`:
  input_ids (B,S), attention_mask (B,S)                  encoder `<s> <src_lang> x </s>` (x noised for DAE)
  labels (B,T)                                           `<tgt_lang> y </s>`, IGNORE_INDEX at padding
  decoder_input_ids (B,T), decoder_attention_mask (B,T)  `<s> <tgt_lang> y`, derived from the labels
  task, src_lang, tgt_lang, sample_id: lists of B str;  is_padding: bool (True for a filler batch)
"""

from __future__ import annotations

import numpy as np
import torch

from swcm.seq2seq_layout import DECODER_SPECIALS, IGNORE_INDEX, decoder_mask_from_labels, label_ids, shift_right


def round_up(n: int | np.ndarray, multiple: int):
    """The smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple


def cut_batches(enc_len: np.ndarray, dec_len: np.ndarray, group: np.ndarray, max_tokens: int, max_samples: int,
                multiple: int) -> list[np.ndarray]:
    """Bucket one window of samples: sort by (group, encoder length, decoder length), then cut greedily so that
    every batch has at most `max_samples` samples and B * (S + T) <= max_tokens after padding to `multiple` (a
    sample alone over budget forms a batch of one). Samples of one group have like-shaped (S, T) -- e.g. DAE,
    and each MT direction -- so grouping them first keeps padding low. Returns index arrays into the window."""
    order = np.lexsort((dec_len, enc_len, group))
    batches, current = [], []
    max_e = max_d = 0
    for i in order:
        e, d = max(max_e, enc_len[i]), max(max_d, dec_len[i])
        cost = (len(current) + 1) * (round_up(e, multiple) + round_up(d, multiple))
        if current and (cost > max_tokens or len(current) == max_samples):
            batches.append(np.asarray(current))
            current, e, d = [], enc_len[i], dec_len[i]
        current.append(i)
        max_e, max_d = e, d
    if current:
        batches.append(np.asarray(current))
    return batches


def collate(encoder: list[np.ndarray], target: list[np.ndarray], tgt_tags: list[int], *, bos: int, eos: int,
            pad: int, multiple: int, task: list[str], src_lang: list[str], tgt_lang: list[str],
            sample_id: list[str]) -> dict:
    """Build the batch dict from full encoder sequences and clean targets y (content ids only), with int64
    numpy arrays (cheap to pickle out of a worker; `to_tensors` makes the trainer's torch tensors)."""
    rows = [label_ids(tag, y, eos) for y, tag in zip(target, tgt_tags)]
    return _batch(list(encoder), rows, bos=bos, pad=pad, multiple=multiple, task=task, src_lang=src_lang,
                  tgt_lang=tgt_lang, sample_id=sample_id)


def _batch(encoder: list, label_rows: list[list[int]], *, bos: int, pad: int, multiple: int, **meta) -> dict:
    b = len(encoder)
    s = round_up(max(len(x) for x in encoder), multiple)
    t = round_up(max(len(r) for r in label_rows), multiple)
    input_ids = np.full((b, s), pad, dtype=np.int64)
    attention = np.zeros((b, s), dtype=np.int64)
    labels = np.full((b, t), IGNORE_INDEX, dtype=np.int64)
    for i, (x, row) in enumerate(zip(encoder, label_rows)):
        input_ids[i, :len(x)] = x
        attention[i, :len(x)] = 1
        labels[i, :len(row)] = row
    label_tensor = torch.from_numpy(labels)
    return {"input_ids": input_ids, "attention_mask": attention,
            "decoder_input_ids": shift_right(label_tensor, bos, pad).numpy(),
            "decoder_attention_mask": decoder_mask_from_labels(label_tensor).numpy(), "labels": labels,
            **meta, "is_padding": False}


def filler_batch(*, bos: int, eos: int, pad: int, multiple: int) -> dict:
    """A one-sample batch for a rank that has run out of samples: `<s> </s>` in, `<s>` out, every label
    IGNORE_INDEX, `is_padding` True. Its loss carries no tokens; the trainer runs it (so collectives stay in step)
    and must not count it."""
    batch = _batch([[bos, eos]], [[IGNORE_INDEX] * DECODER_SPECIALS], bos=bos, pad=pad,
                   multiple=multiple, task=["dae"], src_lang=[""], tgt_lang=[""], sample_id=[""])
    batch["is_padding"] = True
    return batch


TENSOR_KEYS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels")


def to_tensors(batch: dict) -> dict:
    """The batch with its arrays as torch tensors (zero-copy), as the trainer receives it."""
    return {k: torch.from_numpy(v) if k in TENSOR_KEYS else v for k, v in batch.items()}
