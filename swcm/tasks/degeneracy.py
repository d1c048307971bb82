"""How degenerate a system's outputs are, and what a constant system scores.

Units are ROUGE-L's tokens (`swcm.tasks.tokenize.rouge_tokens`: Tibetan syllables, Chinese characters, words
otherwise), so "one repeated unit" means the same thing in every script. All three numbers are percentages:

    distinct         distinct outputs / outputs (100 = every output different; a constant system: 100 / n)
    repeated_unit    outputs of two or more units that are all the same unit ("ཀ་ཀ་ཀ་", "的的的") / outputs
    repeated_ngram   mean over outputs of 1 − distinct 4-grams / 4-grams (seq-rep-4 of Welleck et al. 2019,
                     "Neural text generation with unlikelihood training"); an output of fewer than 4 units has no
                     4-gram and counts 0

The constant baseline gives, for every input, the most frequent output of the system in that input's target
language (ties: the one that comes first in input order): what a system scores that ignores its input.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from swcm.tasks.jsonl import Example
from swcm.tasks.tokenize import rouge_tokens

REPEAT_N = 4   # Welleck et al.'s seq-rep-4: long enough that natural text rarely repeats one inside a sentence


def repeated_ngram_rate(units: Sequence[str], n: int = REPEAT_N) -> float:
    """1 − distinct n-grams / n-grams of `units`; 0 when it has fewer than n units."""
    grams = [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def diagnostics(predictions: Sequence[str]) -> dict[str, float]:
    """{"distinct", "repeated_unit", "repeated_ngram"} of `predictions`, in percent (see the module docstring)."""
    n = len(predictions)
    units = [rouge_tokens(p) for p in predictions]
    one_unit = sum(len(u) >= 2 and len(set(u)) == 1 for u in units)
    return {"distinct": 100 * len(set(predictions)) / n, "repeated_unit": 100 * one_unit / n,
            "repeated_ngram": 100 * sum(repeated_ngram_rate(u) for u in units) / n}


def constant_outputs(examples: Sequence[Example], predictions: Sequence[str]) -> list[str]:
    """For every example, the most frequent of `predictions` among the examples of its target language."""
    by_lang: dict[str, Counter] = {}
    for e, p in zip(examples, predictions, strict=True):
        by_lang.setdefault(e.tgt_lang, Counter())[p] += 1
    most = {lang: counts.most_common(1)[0][0] for lang, counts in by_lang.items()}   # ties: first seen
    return [most[e.tgt_lang] for e in examples]
