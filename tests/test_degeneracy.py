"""Degeneracy diagnostics and the constant baseline against counts made by hand on a small fixture."""

import pytest

from swcm.tasks.degeneracy import constant_outputs, diagnostics, repeated_ngram_rate
from swcm.tasks.jsonl import Example

# Units (swcm.tasks.tokenize): Tibetan syllables, Chinese characters, words.
OUTPUTS = [
    "ཀ་ཀ་ཀ་ཀ་ཀ་",          # 5 x one syllable: one repeated unit; 4-grams 2, distinct 1 -> rate 1/2
    "ཀ་ཀ་ཀ་ཀ་ཀ་",          # the same again (not distinct)
    "བཀྲ་ཤིས་བདེ་ལེགས།",     # 4 different syllables: one 4-gram
    "的的的",               # 3 x one character: one repeated unit; no 4-gram
    "a b a b a b",          # two units alternating: not one unit; 4-grams 3 (abab, baba, abab), distinct 2 -> 1/3
    "x",                    # one unit: not "repeated" (it needs two)
    "",                     # empty: nothing repeated
    "Ab ab",                # lowercased: two equal units -> one repeated unit
]


def test_diagnostics_match_hand_counts():
    d = diagnostics(OUTPUTS)
    assert d["distinct"] == pytest.approx(100 * 7 / 8)
    assert d["repeated_unit"] == pytest.approx(100 * 4 / 8)          # outputs 0, 1, 3 and 7
    assert d["repeated_ngram"] == pytest.approx(100 * (0.5 + 0.5 + 0 + 0 + 1 / 3 + 0 + 0 + 0) / 8)


def test_repeated_ngram_rate():
    assert repeated_ngram_rate(list("aaaa")) == 0.0            # one 4-gram: nothing repeats
    assert repeated_ngram_rate(list("aaaaaa")) == pytest.approx(2 / 3)
    assert repeated_ngram_rate(list("abc")) == 0.0
    assert repeated_ngram_rate(list("abcab"), n=2) == pytest.approx(1 / 4)


def test_constant_outputs_take_each_languages_most_frequent_first_seen_on_ties():
    langs = ["bo", "bo", "bo", "ug", "ug", "bo", "ug"]
    preds = ["x", "y", "y", "p", "q", "x", "r"]   # bo: x 2, y 2 (x first); ug: p, q, r once each (p first)
    examples = [Example("s", "t", "zh", lang, i + 1) for i, lang in enumerate(langs)]
    assert constant_outputs(examples, preds) == ["x", "x", "x", "p", "p", "x", "p"]
