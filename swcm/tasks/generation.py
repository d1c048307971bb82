"""Batched beam search with a seq2seq model and its `swcm.tasks.layouts.Layout`: one prediction per example, in the
examples' order.

Batches hold one target language each (every row of a batch gets the same decoder prefix `<s> <tgt_lang>`)
and, within a language, sources of similar length (sorted longest first, so a batch that does not fit in
memory fails at once), which keeps padding small. Padding changes nothing: the encoder is right-padded under
its attention mask, so a prediction does not depend on the batch it lands in.
"""

from __future__ import annotations

from itertools import groupby
from typing import Sequence

import torch
from tqdm import tqdm

from swcm.tasks.jsonl import Example
from swcm.tasks.layouts import Layout


def source_lengths(tokenizer, examples: Sequence[Example]) -> list[int]:
    """Each example's source length in tokens (without special tokens): what `length_batches` sorts by."""
    return [len(ids) for ids in tokenizer([e.source for e in examples], add_special_tokens=False)["input_ids"]]


def length_batches(examples: Sequence[Example], source_lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of `examples` in batches of at most `batch_size`, one target language per batch, each language's
    examples sorted by source length (longest first; ties in input order)."""
    order = sorted(range(len(examples)), key=lambda i: (examples[i].tgt_lang, -source_lengths[i], i))
    batches = []
    for _, group in groupby(order, key=lambda i: examples[i].tgt_lang):
        group = list(group)
        batches += [group[k:k + batch_size] for k in range(0, len(group), batch_size)]
    return batches


@torch.no_grad()
def generate_batch(model, layout: Layout, examples: Sequence[Example], *, num_beams: int, max_new_tokens: int,
                   max_len: int = 256, synced_gpus: bool = False) -> list[str]:
    """Beam-search predictions for one batch (of one target language, as `length_batches` makes them), in
    order: the decoded text after the decoder prefix of `layout` (`<s> <tgt_lang>` for SWCM), special tokens
    removed. Sources are truncated to `max_len` tokens; `synced_gpus` is transformers' flag for ZeRO-3, where every
    rank must keep stepping."""
    tokenizer = layout.tokenizer
    inputs = layout.inputs([e.source for e in examples], None, [e.src_lang for e in examples],
                           [e.tgt_lang for e in examples], max_len=max_len)
    prefix = inputs["decoder_input_ids"].to(model.device)
    out = model.generate(input_ids=inputs["input_ids"].to(model.device),
                         attention_mask=inputs["attention_mask"].to(model.device), decoder_input_ids=prefix,
                         num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=synced_gpus)
    return [tokenizer.decode(ids[prefix.shape[1]:], skip_special_tokens=True) for ids in out]


def generate(model, layout: Layout, examples: Sequence[Example], *, num_beams: int = 5, max_new_tokens: int = 128,
             batch_size: int = 16, max_len: int = 256, progress: bool = True) -> list[str]:
    """A prediction for every example (see `generate_batch`), in the order of `examples`, batched by
    `length_batches`, with a tqdm progress bar unless `progress=False`."""
    lengths = source_lengths(layout.tokenizer, examples)
    predictions: list[str | None] = [None] * len(examples)
    with tqdm(total=len(examples), desc="generate", unit="sent", disable=not progress) as bar:
        for batch in length_batches(examples, lengths, batch_size):
            texts = generate_batch(model, layout, [examples[i] for i in batch], num_beams=num_beams,
                                   max_new_tokens=max_new_tokens, max_len=max_len)
            for i, text in zip(batch, texts, strict=True):
                predictions[i] = text
            bar.update(len(batch))
    return predictions
