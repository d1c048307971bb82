"""Masked-language-model batches (BERT / XLM-R): token corruption, and the stream that applies it to the clean
pretraining batches.

Of the positions holding an ordinary token -- not padding, and none of the tokenizer's special tokens (`<s>`,
`</s>`, `<pad>`, `<unk>`, `<mask>`, the language tags) -- each is selected independently with probability
`select` (15%). A selected position is scored (its label is the original id) and its input becomes `<mask>`
with probability `mask` (80%), a uniformly drawn ordinary token with probability `random` (10%), or stays as it
is (the remaining 10%). Every other position has the label IGNORE_INDEX.

Randomness comes only from the generator passed in. `MaskedLMStream` seeds one per batch from (seed, split,
rank, position of the batch in the underlying stream), so a resumed run masks every batch exactly as the
uninterrupted run did, with no state of its own to save.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from swcm.seq2seq_layout import IGNORE_INDEX

MLM_PURPOSE = 0x4D4C4D   # first word of every masking seed, apart from the data plan's own purposes
_SPLITS = {"train": 0, "dev": 1}
SEQ2SEQ_ONLY = ("decoder_input_ids", "decoder_attention_mask")   # what an encoder batch drops


@dataclass(frozen=True)
class MaskingRates:
    """BERT's rates: `select` of the ordinary tokens are scored; of those, `mask` become `<mask>`, `random` a random
    ordinary token, the rest stay."""
    select: float = 0.15
    mask: float = 0.8
    random: float = 0.1

    def __post_init__(self):
        if not 0 < self.select < 1:
            raise ValueError(f"mlm select probability {self.select}: expected a value in (0, 1)")
        if self.mask < 0 or self.random < 0 or self.mask + self.random > 1:
            raise ValueError(f"mlm mask / random fractions {self.mask} / {self.random}: expected non-negative values "
                             "summing to at most 1")


def ordinary_tokens(tokenizer) -> np.ndarray:
    """Boolean array over the vocabulary: True for ids that may be selected or drawn as random replacements (every
    id but the special tokens, language tags included)."""
    table = np.ones(len(tokenizer), dtype=bool)
    table[list(tokenizer.all_special_ids)] = False
    return table


def mask_tokens(input_ids: np.ndarray, ordinary: np.ndarray, mask_id: int, rates: MaskingRates,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(corrupted inputs, labels) for the int array `input_ids` (any shape); `ordinary` is `ordinary_tokens`."""
    eligible = ordinary[input_ids]
    selected = eligible & (rng.random(input_ids.shape) < rates.select)
    action = rng.random(input_ids.shape)
    to_mask = selected & (action < rates.mask)
    to_random = selected & (action >= rates.mask) & (action < rates.mask + rates.random)
    inputs = input_ids.copy()
    inputs[to_mask] = mask_id
    pool = np.flatnonzero(ordinary)
    inputs[to_random] = pool[rng.integers(0, len(pool), size=int(to_random.sum()))]
    labels = np.where(selected, input_ids, IGNORE_INDEX)
    return inputs, labels


def batch_rng(seed: int, split: str, rank: int, epoch: int, position: int) -> np.random.Generator:
    """The generator that masks one batch, identified by its split, rank and place (epoch, position) in the stream."""
    return np.random.default_rng([MLM_PURPOSE, seed, _SPLITS[split], rank, epoch, position])


class MaskedLMStream:
    """The batches of a `PretrainStream` of clean DAE samples (mt_ratio 0, no noise: `input_ids` is
    `<s> <lang> x </s>`) as masked-LM batches: `input_ids` corrupted, `labels` (B, S) the scored originals, the
    decoder tensors dropped; metadata (src_lang, is_padding, ...) kept. State, resume and worker lifecycle are the
    underlying stream's."""

    def __init__(self, stream, tokenizer, rates: MaskingRates, seed: int, rank: int):
        self.stream, self.rates, self.seed, self.rank = stream, rates, seed, rank
        self.ordinary = ordinary_tokens(tokenizer)
        self.mask_id = tokenizer.mask_token_id

    def _masked(self, batch: dict, rng: np.random.Generator) -> dict:
        inputs, labels = mask_tokens(batch["input_ids"].numpy(), self.ordinary, self.mask_id, self.rates, rng)
        out = {k: v for k, v in batch.items() if k not in SEQ2SEQ_ONLY}
        out["input_ids"], out["labels"] = torch.from_numpy(inputs), torch.from_numpy(labels)
        return out

    def __iter__(self) -> Iterator[dict]:
        """From the current position: train batches forever; for the dev split, `epoch_batches()`."""
        return self.epoch_batches() if self.stream.split == "dev" else self._train()

    def _train(self) -> Iterator[dict]:
        batches = iter(self.stream)
        try:
            for batch in batches:
                # The stream's position has moved past this batch: (epoch, batches done) names it uniquely.
                rng = batch_rng(self.seed, "train", self.rank, self.stream.epoch, self.stream.batches_done)
                yield self._masked(batch, rng)
        finally:   # closing this generator ends the loader's workers now
            batches.close()

    def epoch_batches(self) -> Iterator[dict]:
        """The dev split's epoch (what the trainer's dev loss reads), masked the same way every time."""
        batches = self.stream.epoch_batches()
        try:
            for n, batch in enumerate(batches):
                yield self._masked(batch, batch_rng(self.seed, "dev", self.rank, 0, n))
        finally:
            batches.close()

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)
