"""Scores of predictions per target language and overall, the paired comparison of two systems, and tables.

Groups: each target language, then "overall" (all examples). chrF and BLEU are corpus scores of the group,
ROUGE-L the mean of per-sample scores; all in percent. Overall BLEU exists only when every target language
uses the same BLEU tokenizer (pooling n-grams counted under different tokenizations means nothing); otherwise
its score is null and its tokenizer "mixed". With the model's likelihood statistics (`swcm.tasks.likelihood`) a
group also has its per-token NLL and perplexity; every group has the degeneracy diagnostics
(`swcm.tasks.degeneracy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from swcm.tasks import likelihood as lik
from swcm.tasks.bootstrap import RESAMPLES, SEED, paired_bootstrap
from swcm.tasks.degeneracy import diagnostics
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
    mix), its predictions and, per single-number metric (nll when the likelihood is known, chrf, bleu,
    rouge_l_f/p/r), per-example statistics and score."""
    n: int
    bleu: CorpusMetric | None
    scalars: dict[str, Scalar]
    predictions: list[str]


def _group(stats: dict[str, np.ndarray], bleu_metric: CorpusMetric | None, predictions: list[str]) -> Group:
    """A Group from per-example "chrf", "rouge", (with `bleu_metric`) "bleu" and (if there) "nll" statistics."""
    scalars = {"nll": (stats["nll"], lik.nll)} if "nll" in stats else {}
    scalars["chrf"] = (stats["chrf"], CHRF_METRIC.score)
    if bleu_metric is not None:
        scalars["bleu"] = (stats["bleu"], bleu_metric.score)
    for part in ROUGE_PARTS:
        scalars[f"rouge_l_{part}"] = (stats["rouge"], lambda total, part=part: rouge_l_score(total)[part])
    return Group(len(stats["chrf"]), bleu_metric, scalars, predictions)


def groups(examples: Sequence[Example], predictions: Sequence[str], likelihood: np.ndarray | None = None
           ) -> dict[str, Group]:
    """The groups of `examples` scored with `predictions` (and, if given, the (n, 2) `likelihood` statistics of
    `swcm.tasks.likelihood`): each target language (sorted), then "overall"."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    stats, metrics, hyps_of = {}, {}, {}
    for lang in sorted({e.tgt_lang for e in examples}):
        rows = [i for i, e in enumerate(examples) if e.tgt_lang == lang]
        hyps, refs = [predictions[i] for i in rows], [examples[i].target for i in rows]
        metrics[lang], hyps_of[lang] = bleu(lang), hyps
        stats[lang] = {"chrf": CHRF_METRIC.stats(hyps, refs), "rouge": rouge_l_stats(hyps, refs),
                       "bleu": metrics[lang].stats(hyps, refs)}
        if likelihood is not None:
            stats[lang]["nll"] = likelihood[rows]
    out = {lang: _group(stats[lang], metrics[lang], hyps_of[lang]) for lang in stats}
    # Overall: the languages' rows stacked, in the same order for any system scored on these examples.
    one_tokenizer = len({m.tokenizer for m in metrics.values()}) == 1
    stacked = {k: np.concatenate([s[k] for s in stats.values()]) for k in next(iter(stats.values()))}
    out[OVERALL] = _group(stacked, next(iter(metrics.values())) if one_tokenizer else None,
                          [p for hyps in hyps_of.values() for p in hyps])
    return out


def score_predictions(examples: Sequence[Example], predictions: Sequence[str], likelihood: np.ndarray | None = None
                      ) -> dict[str, dict]:
    """{group: {"n", ["nll", "ppl", "tokens"], "chrf", "chrf_signature", "bleu": {"score", "tokenizer",
    "signature"}, "rouge_l": {"f", "p", "r"}, "distinct", "repeated_unit", "repeated_ngram"}}: nll (nats per
    token), ppl and tokens (scored reference tokens) only with `likelihood`; a group whose BLEU tokenizers mix has
    bleu {"score": None, "tokenizer": "mixed", "signature": None}."""
    out = {}
    for name, group in groups(examples, predictions, likelihood).items():
        scores = {metric: score(stats.sum(0)) for metric, (stats, score) in group.scalars.items()}
        out[name] = {"n": group.n}
        if "nll" in group.scalars:
            total = group.scalars["nll"][0].sum(0)
            out[name].update(nll=lik.nll(total), ppl=lik.ppl(total), tokens=int(total[1]))
        out[name].update({"chrf": scores["chrf"], "chrf_signature": CHRF_METRIC.signature,
                          "bleu": {"score": scores.get("bleu"),
                                   "tokenizer": group.bleu.tokenizer if group.bleu else "mixed",
                                   "signature": group.bleu.signature if group.bleu else None},
                          "rouge_l": {p: scores[f"rouge_l_{p}"] for p in ROUGE_PARTS}},
                         **diagnostics(group.predictions))
    return out


def compare_predictions(examples: Sequence[Example], predictions: Sequence[str], other: Sequence[str],
                        resamples: int = RESAMPLES, seed: int = SEED, likelihood: np.ndarray | None = None,
                        other_likelihood: np.ndarray | None = None) -> dict[str, dict[str, dict]]:
    """Paired bootstrap of `predictions` (A) against `other` (B) on the same examples: {group: {metric:
    {"delta", "ci95": [low, high], "p_value"}}}, delta = A − B. The NLL is compared when both likelihoods are given
    and score the same tokens (`swcm.tasks.likelihood.comparable`)."""
    both = (likelihood is not None and other_likelihood is not None
            and lik.comparable(likelihood, other_likelihood))
    a = groups(examples, predictions, likelihood if both else None)
    b = groups(examples, other, other_likelihood if both else None)
    out = {}
    for name, group in a.items():
        out[name] = {}
        for metric, (stats_a, score) in group.scalars.items():
            d = paired_bootstrap(stats_a, b[name].scalars[metric][0], score, resamples, seed)
            out[name][metric] = {"delta": d.delta, "ci95": [d.low, d.high], "p_value": d.p_value}
    return out


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_scores(scores: dict[str, dict]) -> str:
    """A text table: one row per group (n, NLL and perplexity when known, chrF, BLEU and its tokenizer, ROUGE-L
    F/P/R, the degeneracy diagnostics), then the signatures."""
    lines = [f"{'tgt':<8}{'n':>6}{'NLL':>7}{'ppl':>9}{'chrF':>8}{'BLEU':>8}  {'BLEU tok':<14}{'RL-F':>7}{'RL-P':>7}"
             f"{'RL-R':>7}{'dist%':>7}{'1unit%':>7}{'rep4%':>7}"]
    for group, s in scores.items():
        b, r = s["bleu"], s["rouge_l"]
        lines.append(f"{group:<8}{s['n']:>6}{_fmt(s.get('nll'), 3):>7}{_fmt(s.get('ppl'), 1):>9}{_fmt(s['chrf']):>8}"
                     f"{_fmt(b['score']):>8}  {b['tokenizer']:<14}{_fmt(r['f']):>7}{_fmt(r['p']):>7}{_fmt(r['r']):>7}"
                     f"{_fmt(s['distinct'], 1):>7}{_fmt(s['repeated_unit'], 1):>7}{_fmt(s['repeated_ngram'], 1):>7}")
    lines.append(f"chrF: {scores[OVERALL]['chrf_signature']}")
    for group, s in scores.items():
        if group != OVERALL:
            on = " (on Tibetan syllables)" if s["bleu"]["tokenizer"] == TIBETAN_SYLLABLES else ""
            lines.append(f"BLEU {group}: {s['bleu']['signature']}{on}")
    lines.append("ROUGE-L: LCS over swcm.tasks.tokenize tokens, F/P/R averaged per sample")
    lines.append("NLL: nats per reference token under teacher forcing; dist%: distinct outputs; 1unit%: outputs of "
                 "one repeated unit; rep4%: mean repeated 4-gram rate (swcm/tasks/degeneracy.py)")
    return "\n".join(lines)


def format_comparison(comparison: dict[str, dict[str, dict]]) -> str:
    """A text table: per group and metric, delta (A − B), its 95% bootstrap interval and p-value."""
    lines = [f"{'tgt':<8}{'metric':<11}{'delta':>8}  {'95% interval':<20}{'p':>7}"]
    for group, metrics in comparison.items():
        for name, d in metrics.items():
            digits = 3 if name == "nll" else 2   # nats per token: differences of a few hundredths matter
            interval = "[{:+.{d}f}, {:+.{d}f}]".format(*d["ci95"], d=digits)
            lines.append(f"{group:<8}{name:<11}{d['delta']:>+8.{digits}f}  {interval:<20}{d['p_value']:>7.4f}")
    return "\n".join(lines)
