"""Held-out likelihood: the per-token negative log-likelihood of each reference given its source, under teacher
forcing, with any seq2seq model and its `swcm.tasks.layouts.Layout`.

Per example the statistics are [sum of the scored tokens' cross-entropy (nats), scored tokens] (the tokens of y
and `</s>`; the target-language token is given, not scored). A group's NLL is the sum of the first column over the
sum of the second (per token, not a mean of sentence means), its perplexity exp(NLL); from summed statistics, so the
paired bootstrap resamples it like any corpus metric. Per-token NLL compares models only over the same tokens: two
models with different tokenizers score different tokens, and `comparable` says so.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from swcm.seq2seq_layout import IGNORE_INDEX
from swcm.tasks.jsonl import Example

if TYPE_CHECKING:   # torch only where a model runs: scoring a prediction file needs none
    import torch

    from swcm.tasks.layouts import Layout


def batch_token_losses(model, batch: dict[str, "torch.Tensor"]) -> "torch.Tensor":
    """(B, T) fp32 cross-entropy of every label of `batch` (a `Layout.inputs` batch with labels) under teacher
    forcing, 0 where the label is IGNORE_INDEX. The model is called without labels (some compute a loss of their own
    that shifts or smooths them); its logits are scored here."""
    import torch
    import torch.nn.functional as F

    device = model.device
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       decoder_input_ids=batch["decoder_input_ids"].to(device),
                       decoder_attention_mask=batch["decoder_attention_mask"].to(device), use_cache=False).logits
    labels = batch["labels"].to(device)
    losses = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return losses.masked_fill(labels.eq(IGNORE_INDEX), 0.0).cpu()


def likelihood_stats(model, layout: "Layout", examples: Sequence[Example], *, batch_size: int = 16,
                     max_len: int = 256, progress: bool = True) -> np.ndarray:
    """(n, 2) float64 rows [NLL sum in nats, scored tokens], one per example in the order of `examples`, in batches
    as generation makes them (one target language each, similar source lengths)."""
    from tqdm import tqdm

    from swcm.tasks.generation import length_batches, source_lengths

    lengths = source_lengths(layout.tokenizer, examples)
    stats = np.zeros((len(examples), 2), dtype=np.float64)
    with tqdm(total=len(examples), desc="likelihood", unit="sent", disable=not progress) as bar:
        for rows in length_batches(examples, lengths, batch_size):
            chosen = [examples[i] for i in rows]
            batch = layout.inputs([e.source for e in chosen], [e.target for e in chosen],
                                  [e.src_lang for e in chosen], [e.tgt_lang for e in chosen], max_len=max_len)
            losses = batch_token_losses(model, batch)
            stats[rows, 0] = losses.double().sum(1).numpy()
            stats[rows, 1] = batch["labels"].ne(IGNORE_INDEX).sum(1).numpy()
            bar.update(len(rows))
    return stats


def nll(total: np.ndarray) -> float:
    """Per-token NLL (nats) from summed `likelihood_stats` rows."""
    return float(total[0] / total[1])


def ppl(total: np.ndarray) -> float:
    """Perplexity exp(NLL) from summed `likelihood_stats` rows."""
    return math.exp(nll(total))


def comparable(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two models' statistics on the same examples score the same number of tokens in every reference (the
    condition for comparing their per-token NLL)."""
    return a.shape == b.shape and bool(np.array_equal(a[:, 1], b[:, 1]))
