"""Scores of predictions per target language and overall, the paired comparison of two systems, and tables.

Groups: each target language, then "overall" (all examples). chrF and BLEU are corpus scores of the group,
ROUGE-L the mean of per-sample scores; all in percent. Overall BLEU exists only when every target language
uses the same BLEU tokenizer (pooling n-grams counted under different tokenizations means nothing); otherwise
its score is null and its tokenizer "mixed".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from swcm.tasks.bootstrap import RESAMPLES, SEED, paired_bootstrap
from swcm.tasks.jsonl import Example
from swcm.tasks.metrics import TIBETAN_SYLLABLES, CorpusMetric, bleu, chrf
from swcm.tasks.rouge import rouge_l_score, rouge_l_stats

OVERALL = "overall"
ROUGE_PARTS = ("f", "p", "r")
CHRF_METRIC = chrf()
Scalar = tuple[np.ndarray, Callable[[np.ndarray], float]]  # per-example statistics, corpus score from their sum


@dataclass
class Group:
    """One group of examples (a target language, or all): its size, its BLEU (None where BLEU tokenizers
    mix) and, per single-number metric (chrf, bleu, rouge_l_f/p/r), per-example statistics and score."""
    n: int
    bleu: CorpusMetric | None
    scalars: dict[str, Scalar]


def _group(stats: dict[str, np.ndarray], bleu_metric: CorpusMetric | None) -> Group:
    """A Group from per-example "chrf", "rouge" and (with `bleu_metric`) "bleu" statistics."""
    scalars = {"chrf": (stats["chrf"], CHRF_METRIC.score)}
    if bleu_metric is not None:
        scalars["bleu"] = (stats["bleu"], bleu_metric.score)
    for part in ROUGE_PARTS:
        scalars[f"rouge_l_{part}"] = (stats["rouge"], lambda total, part=part: rouge_l_score(total)[part])
    return Group(len(stats["chrf"]), bleu_metric, scalars)


def groups(examples: Sequence[Example], predictions: Sequence[str]) -> dict[str, Group]:
    """The groups of `examples` scored with `predictions`: each target language (sorted), then "overall"."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    stats, metrics = {}, {}
    for lang in sorted({e.tgt_lang for e in examples}):
        rows = [i for i, e in enumerate(examples) if e.tgt_lang == lang]
        hyps, refs = [predictions[i] for i in rows], [examples[i].target for i in rows]
        metrics[lang] = bleu(lang)
        stats[lang] = {"chrf": CHRF_METRIC.stats(hyps, refs), "rouge": rouge_l_stats(hyps, refs),
                       "bleu": metrics[lang].stats(hyps, refs)}
    out = {lang: _group(stats[lang], metrics[lang]) for lang in stats}
    # Overall: the languages' rows stacked, in the same order for any system scored on these examples.
    one_tokenizer = len({m.tokenizer for m in metrics.values()}) == 1
    stacked = {k: np.concatenate([s[k] for s in stats.values()]) for k in ("chrf", "rouge", "bleu")}
    out[OVERALL] = _group(stacked, next(iter(metrics.values())) if one_tokenizer else None)
    return out


def score_predictions(examples: Sequence[Example], predictions: Sequence[str]) -> dict[str, dict]:
    """{group: {"n", "chrf", "chrf_signature", "bleu": {"score", "tokenizer", "signature"}, "rouge_l": {"f", "p",
    "r"}}}; a group whose BLEU tokenizers mix has bleu {"score": None, "tokenizer": "mixed", "signature": None}."""
    out = {}
    for name, group in groups(examples, predictions).items():
        scores = {metric: score(stats.sum(0)) for metric, (stats, score) in group.scalars.items()}
        out[name] = {"n": group.n, "chrf": scores["chrf"], "chrf_signature": CHRF_METRIC.signature,
                     "bleu": {"score": scores.get("bleu"), "tokenizer": group.bleu.tokenizer if group.bleu else "mixed",
                              "signature": group.bleu.signature if group.bleu else None},
                     "rouge_l": {p: scores[f"rouge_l_{p}"] for p in ROUGE_PARTS}}
    return out


def compare_predictions(examples: Sequence[Example], predictions: Sequence[str], other: Sequence[str],
                        resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, dict[str, dict]]:
    """Paired bootstrap of `predictions` (A) against `other` (B) on the same examples: {group: {metric:
    {"delta", "ci95": [low, high], "p_value"}}}, delta = A − B."""
    a, b = groups(examples, predictions), groups(examples, other)
    out = {}
    for name, group in a.items():
        out[name] = {}
        for metric, (stats_a, score) in group.scalars.items():
            d = paired_bootstrap(stats_a, b[name].scalars[metric][0], score, resamples, seed)
            out[name][metric] = {"delta": d.delta, "ci95": [d.low, d.high], "p_value": d.p_value}
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_scores(scores: dict[str, dict]) -> str:
    """A text table: one row per group (n, chrF, BLEU and its tokenizer, ROUGE-L F/P/R), then the signatures."""
    lines = [f"{'tgt':<8}{'n':>6}{'chrF':>8}{'BLEU':>8}  {'BLEU tok':<14}{'RL-F':>7}{'RL-P':>7}{'RL-R':>7}"]
    for group, s in scores.items():
        b, r = s["bleu"], s["rouge_l"]
        lines.append(f"{group:<8}{s['n']:>6}{_fmt(s['chrf']):>8}{_fmt(b['score']):>8}  {b['tokenizer']:<14}"
                     f"{_fmt(r['f']):>7}{_fmt(r['p']):>7}{_fmt(r['r']):>7}")
    lines.append(f"chrF: {scores[OVERALL]['chrf_signature']}")
    for group, s in scores.items():
        if group != OVERALL:
            on = " (on Tibetan syllables)" if s["bleu"]["tokenizer"] == TIBETAN_SYLLABLES else ""
            lines.append(f"BLEU {group}: {s['bleu']['signature']}{on}")
    lines.append("ROUGE-L: LCS over swcm.tasks.tokenize tokens, F/P/R averaged per sample")
    return "\n".join(lines)


def format_comparison(comparison: dict[str, dict[str, dict]]) -> str:
    """A text table: per group and metric, delta (A − B), its 95% bootstrap interval and p-value."""
    lines = [f"{'tgt':<8}{'metric':<11}{'delta':>8}  {'95% interval':<20}{'p':>7}"]
    for group, metrics in comparison.items():
        for name, d in metrics.items():
            interval = "[{:+.2f}, {:+.2f}]".format(*d["ci95"])
            lines.append(f"{group:<8}{name:<11}{d['delta']:>+8.2f}  {interval:<20}{d['p_value']:>7.4f}")
    return "\n".join(lines)
