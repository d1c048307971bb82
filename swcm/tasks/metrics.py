"""chrF and BLEU through sacrebleu, as per-sentence statistics that add up.

A metric's corpus score over any subset of sentences (one target language, a bootstrap resample) is
`metric.score(stats[subset].sum(0))`: the same sufficient statistics sacrebleu's own paired tests use
(`_extract_corpus_statistics` / `_compute_score_from_stats`), so scores equal `sacrebleu`'s command line.

chrF: sacrebleu's default chrF2 (character 6-grams, beta 2, no word n-grams: chrF++'s word n-grams mean
nothing for unsegmented Chinese and Tibetan), case-sensitive, the same for every language.

BLEU: corpus BLEU, case-sensitive, exponential smoothing, with a tokenizer chosen per target language:
- zh: sacrebleu's `zh` (each CJK character a token), the WMT convention for Chinese.
- ug, kk, mn: `intl`, which splits every Unicode punctuation mark off its word. `13a`, sacrebleu's default,
  splits only ASCII-range punctuation and leaves the Arabic comma ، and question mark ؟, « », and the
  Mongolian ᠂ ᠃ glued to the words.
- bo: Tibetan syllables. Tibetan writes no spaces between words, so `13a`/`intl` see a whole clause as one
  token, and `char` counts code points (a stacked syllable is several). The text is segmented by
  `swcm.tasks.tokenize.rouge_tokens` (the ROUGE-L syllables, case kept) and scored with `tok:none`.
  `flores200` (spBLEU) would need its sentencepiece model downloaded, which evaluation does not do.
- any other language: `13a`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

from swcm.tasks.tokenize import rouge_tokens

TIBETAN_SYLLABLES = "bo-syllables"
BLEU_TOKENIZERS = {"zh": "zh", "bo": TIBETAN_SYLLABLES, "ug": "intl", "kk": "intl", "mn": "intl"}
DEFAULT_BLEU_TOKENIZER = "13a"


def bleu_tokenizer(tgt_lang: str) -> str:
    """The BLEU tokenizer for target language `tgt_lang`: a sacrebleu tokenizer name or `bo-syllables`."""
    return BLEU_TOKENIZERS.get(tgt_lang, DEFAULT_BLEU_TOKENIZER)


def tibetan_syllables(text: str) -> str:
    """`text` as space-separated Tibetan syllables (tsheg and shad dropped), the input of `tok:none` BLEU."""
    return " ".join(rouge_tokens(text, lowercase=False))


class CorpusMetric:
    """A sacrebleu metric with an optional segmentation applied to both sides first."""

    def __init__(self, name: str, metric, segment: Callable[[str], str] | None = None, tokenizer: str | None = None):
        self.name, self.tokenizer = name, tokenizer
        self._metric, self._segment = metric, segment
        metric.num_refs = 1  # always one reference per sentence; sacrebleu learns it only when it first scores

    @property
    def signature(self) -> str:
        """sacrebleu's signature (tokenizer, case, smoothing, version), e.g. `nrefs:1|case:mixed|...|tok:zh|...`."""
        return str(self._metric.get_signature())

    def stats(self, hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
        """One row of sufficient statistics per sentence (shape [n, k])."""
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
        hypotheses, references = list(hypotheses), list(references)
        if self._segment is not None:
            hypotheses, references = [self._segment(t) for t in hypotheses], [self._segment(t) for t in references]
        return np.array(self._metric._extract_corpus_statistics(hypotheses, [references]), dtype=np.int64)

    def score(self, total: np.ndarray) -> float:
        """The corpus score (0-100) from summed `stats` rows."""
        return float(self._metric._compute_score_from_stats(total.tolist()).score)


def chrf() -> CorpusMetric:
    """sacrebleu's chrF2 (character 6-grams, beta 2)."""
    return CorpusMetric("chrf", CHRF())


def bleu(tgt_lang: str) -> CorpusMetric:
    """Corpus BLEU with `bleu_tokenizer(tgt_lang)`."""
    tok = bleu_tokenizer(tgt_lang)
    if tok == TIBETAN_SYLLABLES:
        return CorpusMetric("bleu", BLEU(tokenize="none"), segment=tibetan_syllables, tokenizer=tok)
    return CorpusMetric("bleu", BLEU(tokenize=tok), tokenizer=tok)
