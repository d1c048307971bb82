"""Paired bootstrap resampling (Koehn 2004) of the difference between two systems on the same inputs.

Each resample draws n of the n inputs with replacement, the same draw for both systems, and recomputes both
corpus scores from summed per-input statistics (so BLEU and chrF are resampled as corpus metrics, not as
averages of sentence scores). With δ the observed difference A − B and d_1..d_B the resampled ones:

- 95% interval: the 2.5th and 97.5th percentiles of d_b.
- p-value (two-sided, H0: no difference): the bootstrap distribution shifted to mean zero under H0,
  p = (1 + #{b : |d_b − δ| >= |δ|}) / (B + 1). Two identical systems give δ = 0 and p = 1; the +1 keeps p
  above zero (at least 1/(B+1)) however clear the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

RESAMPLES = 1000
SEED = 12345


@dataclass(frozen=True)
class Difference:
    """System A's score minus system B's, its 95% bootstrap interval and two-sided p-value."""
    delta: float
    low: float
    high: float
    p_value: float


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """For each resample, how often each of the n inputs is drawn; the same sequence for the same arguments."""
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.bincount(rng.integers(0, n, size=n), minlength=n)


def paired_bootstrap(stats_a: np.ndarray, stats_b: np.ndarray, score: Callable[[np.ndarray], float],
                     resamples: int = RESAMPLES, seed: int = SEED) -> Difference:
    """The difference score(A) − score(B), where `score` maps summed per-input statistics to a corpus score and
    `stats_a`, `stats_b` hold one row per input (the same inputs in the same order)."""
    if stats_a.shape[0] != stats_b.shape[0]:
        raise ValueError(f"paired bootstrap needs the same inputs: {stats_a.shape[0]} vs {stats_b.shape[0]} rows")
    delta = score(stats_a.sum(0)) - score(stats_b.sum(0))
    diffs = np.array([score(c @ stats_a) - score(c @ stats_b)
                      for c in resample_counts(stats_a.shape[0], resamples, seed)])
    low, high = np.percentile(diffs, [2.5, 97.5])
    p_value = (1 + np.count_nonzero(np.abs(diffs - delta) >= abs(delta))) / (resamples + 1)
    return Difference(float(delta), float(low), float(high), float(p_value))
