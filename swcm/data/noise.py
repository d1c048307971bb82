"""mBART denoising noise on token ids: sentence permutation, then span masking (one `<mask>` per span).

Operates on the content ids only (no `<s>`, language tag or `</s>`: those are added afterwards), so special
tokens are never masked. Randomness comes only from the generator passed in.
"""

from __future__ import annotations

import numpy as np


class DenoisingNoise:
    """Masks `mask_ratio` of a sequence's tokens in spans whose lengths are Poisson(`poisson_lambda`), each span
    replaced by one `<mask>` (a zero-length span inserts a `<mask>`, as in fairseq's mBART), after permuting
    its sentences if `permute_sentences`. Spans never touch each other, so each `<mask>` is exactly one span.

    `sentence_end` is a boolean array over the vocabulary: True for ids whose piece ends a sentence.
    """

    def __init__(self, mask_id: int, mask_ratio: float, poisson_lambda: float, permute_sentences: bool,
                 sentence_end: np.ndarray):
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"data.mask_ratio {mask_ratio}: expected a fraction in [0, 1)")
        if poisson_lambda <= 0:
            raise ValueError(f"data.poisson_lambda {poisson_lambda}: expected > 0")
        self.mask_id, self.mask_ratio, self.lam = mask_id, mask_ratio, poisson_lambda
        self.permute, self.sentence_end = permute_sentences, sentence_end

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The noised copy of `ids` (int array)."""
        if self.permute:
            ids = self.permute_sentences(ids, rng)
        return self.mask_spans(ids, rng)

    def permute_sentences(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Shuffle the sentences of `ids`, split after each sentence-end token that is not followed by another (a
        run such as "། །" ends one sentence); unchanged if fewer than two."""
        ends = self.sentence_end[ids]
        cuts = np.flatnonzero(ends[:-1] & ~ends[1:]) + 1
        if len(cuts) == 0:
            return ids
        sentences = np.split(ids, cuts)
        return np.concatenate([sentences[i] for i in rng.permutation(len(sentences))])

    def mask_spans(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Replace round(mask_ratio * n) tokens, in Poisson-length spans, by one `<mask>` per span."""
        n = len(ids)
        k = int(self.mask_ratio * n + 0.5)
        if k == 0:
            return ids
        lengths = self._span_lengths(k, n - k + 1, rng)
        m = len(lengths)
        # Stars and bars: the n - k kept tokens leave n - k + 1 gaps; each span goes into its own gap, in order.
        gaps = np.sort(rng.choice(n - k + 1, size=m, replace=False))
        before = np.cumsum(lengths) - lengths
        starts = gaps + before
        masked = np.repeat(starts, lengths) + (np.arange(k) - np.repeat(before, lengths))
        keep = np.ones(n, dtype=bool)
        keep[masked] = False
        return np.insert(ids[keep], gaps, self.mask_id)

    def _span_lengths(self, k: int, max_spans: int, rng: np.random.Generator) -> np.ndarray:
        """Poisson span lengths summing to exactly k (the last one cut short), at most `max_spans` of them."""
        draws = rng.poisson(self.lam, size=int(2 * k / self.lam) + 8)   # ~2x the expected number needed
        total = np.cumsum(draws)
        while total[-1] < k:
            draws = np.concatenate([draws, rng.poisson(self.lam, size=len(draws))])
            total = np.cumsum(draws)
        last = int(np.searchsorted(total, k))
        lengths = draws[:last + 1].copy()
        lengths[last] = k - (total[last - 1] if last else 0)
        if len(lengths) > max_spans:   # only for mask ratios near 1: drop insertions, then merge the tail
            lengths = lengths[lengths > 0]
            if len(lengths) > max_spans:
                lengths = np.concatenate([lengths[:max_spans - 1], [lengths[max_spans - 1:].sum()]])
        return lengths
