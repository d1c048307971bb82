"""ROUGE-L F/P/R from the longest common subsequence, per sample, then averaged (as the XLM-SWCM paper scores).

For one sample with LCS length L, prediction length m and reference length n (tokens of `rouge_tokens`):
P = L/m, R = L/n, F = 2PR/(P+R) = 2L/(m+n). A sample whose prediction or reference has no tokens scores 0
(rouge-score's convention). Averaging per sample is why a table can show F below both P and R.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from swcm.tasks.tokenize import rouge_tokens


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of `a` and `b` (O(len(a)·len(b)) time, O(len(b)) memory)."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j-1] of the previous row
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(prediction: str, reference: str) -> tuple[float, float, float]:
    """(F, P, R) of one prediction against one reference, as fractions in [0, 1]."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred or not ref:
        return 0.0, 0.0, 0.0
    common = lcs_length(pred, ref)
    return 2 * common / (len(pred) + len(ref)), common / len(pred), common / len(ref)


def rouge_l_stats(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-sample rows [F, P, R, 1]: summed over any subset they give that subset's mean (see `rouge_l_score`)."""
    return np.array([(*rouge_l(p, r), 1.0) for p, r in zip(predictions, references, strict=True)],
                    dtype=np.float64).reshape(-1, 4)


def rouge_l_score(total: np.ndarray) -> dict[str, float]:
    """Mean ROUGE-L {"f", "p", "r"} in percent from summed `rouge_l_stats` rows."""
    f, p, r, n = total
    return {"f": 100 * f / n, "p": 100 * p / n, "r": 100 * r / n}
