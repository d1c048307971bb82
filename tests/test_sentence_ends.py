"""Sentence ends per script (swcm/data/text.py): traditional Mongolian full stops, the Tibetan shad rule, and the
same rule at token level in mBART's sentence permutation (swcm/data/noise.py)."""

import itertools
from pathlib import Path

import numpy as np

from swcm.data.noise import DenoisingNoise
from swcm.data.text import sentence_cut_points

UDHR = Path(__file__).resolve().parents[1] / "data" / "demo" / "parallel" / "udhr" / "udhr_article1.tsv"


def _udhr(lang: str) -> str:
    for line in UDHR.read_text(encoding="utf-8").splitlines():
        code, text, _ = line.split("\t")
        if code == lang:
            return text
    raise KeyError(lang)


def _sentences(text: str) -> list[str]:
    """Split at the cut points, with one token per character."""
    cuts = sentence_cut_points(text, [(i, i + 1) for i in range(len(text))])
    return [text[a:b].strip() for a, b in zip([0, *cuts], [*cuts, len(text)])]


def test_traditional_mongolian_full_stop_ends_a_sentence_and_the_comma_does_not():
    text = _udhr("mn-Mong")   # UDHR article 1: two sentences, each ending in ᠃ (U+1803), with ᠂ commas inside
    assert text.count("\u1803") == 2 and "\u1802" in text
    first, second = _sentences(text)
    assert first.endswith("\u1803") and second.endswith("\u1803")
    assert "\u1802" in first and "\u1803" not in first[:-1]
    assert _sentences("ᠠ᠉ ᠪ᠃") == ["ᠠ᠉", "ᠪ᠃"]   # the Manchu full stop U+1809 too


def test_tibetan_shad_ends_a_sentence_and_a_run_of_shads_ends_one():
    assert _sentences("ང་ཚོ་སློབ་གྲྭར་འགྲོ། ཡག་པོ་འདུག། །ཁྱེད་རང་།") == ["ང་ཚོ་སློབ་གྲྭར་འགྲོ།", "ཡག་པོ་འདུག། །", "ཁྱེད་རང་།"]
    assert _sentences("ཀ་༎ཁ་༑") == ["ཀ་༎", "ཁ་༑"]   # the shad variants
    text = _udhr("bo-Tibt")
    pieces = _sentences(text)
    assert "".join(p.replace(" ", "") for p in pieces) == text.replace(" ", "")
    assert all(p[-1] in "།༎" for p in pieces) and len(pieces) == text.count("།") + text.count("༎")
    assert _sentences("ཀ། །") == ["ཀ། །"]   # "། །" at the end is one end, not a second empty sentence


def test_permutation_cuts_after_the_last_end_token_of_a_run():
    end = np.zeros(10, dtype=bool)
    end[9] = True   # id 9 is a piece ending in a terminator (e.g. "།" and "▁།")
    noise = DenoisingNoise(mask_id=8, mask_ratio=0.0, poisson_lambda=3.5, permute_sentences=True, sentence_end=end)
    ids = np.array([1, 2, 9, 9, 3, 4, 9, 5])   # sentences [1 2 9 9] [3 4 9] [5]
    seen = set()
    for seed in range(40):
        out = noise.permute_sentences(ids, np.random.default_rng(seed))
        seen.add(tuple(out))
        assert sorted(out.tolist()) == sorted(ids.tolist())
    sentences = [(1, 2, 9, 9), (3, 4, 9), (5,)]
    assert seen == {sum(p, ()) for p in itertools.permutations(sentences)}
