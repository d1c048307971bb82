"""Scoring: ROUGE-L on hand-counted examples in every language, chrF/BLEU against sacrebleu's command line,
the paired bootstrap on identical, clearly different and symmetric systems."""

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from swcm.tasks.bootstrap import paired_bootstrap
from swcm.tasks.metrics import bleu, bleu_tokenizer, chrf, tibetan_syllables
from swcm.tasks.rouge import lcs_length, rouge_l, rouge_l_score, rouge_l_stats
from swcm.tasks.tokenize import rouge_tokens

NTREX = Path(__file__).resolve().parents[1] / "data" / "demo" / "parallel" / "ntrex128"
SACREBLEU = Path(sys.executable).with_name("sacrebleu")
NNBSP = "\u202f"  # narrow no-break space: attaches a Mongolian case suffix

# (prediction, reference, prediction tokens, reference tokens, LCS length), all counted by hand.
HAND = {
    # 今 天 天 很 好 / 今 天 天 气 很 好: LCS 今 天 天 很 好 = 5; the full stop and ！ are not tokens.
    "zh": ("今天天很好！", "今天天气很好。",
           ["今", "天", "天", "很", "好"], ["今", "天", "天", "气", "很", "好"], 5),
    # Full-width ＧＤＰ and ５ become gdp and 5 (NFKC, lowercase); a Latin run stays one word; % is not a token.
    # gdp 增 长 5 / gdp 增 长 了 5: LCS gdp 增 长 5 = 4.
    "zh-latin": ("ＧＤＰ增长５％", "GDP增长了5%。",
                 ["gdp", "增", "长", "5"], ["gdp", "增", "长", "了", "5"], 4),
    # Syllables between tsheg ་, shad ། and nyis shad ༎: 8 / 9; LCS drops མི and keeps
    # བཀྲ ཤིས ལེགས ང སློབ གྲྭར འགྲོ = 7 (བདེ and ཚོ are missing from the prediction).
    "bo": ("བཀྲ་ཤིས་ལེགས། ང་སློབ་གྲྭར་མི་འགྲོ༎", "བཀྲ་ཤིས་བདེ་ལེགས། ང་ཚོ་སློབ་གྲྭར་འགྲོ།",
           ["བཀྲ", "ཤིས", "ལེགས", "ང", "སློབ", "གྲྭར", "མི", "འགྲོ"],
           ["བཀྲ", "ཤིས", "བདེ", "ལེགས", "ང", "ཚོ", "སློབ", "གྲྭར", "འགྲོ"], 7),
    # A Latin name glued to a syllable is cut off it (as in NTREX's Tibetan). Orders differ:
    # the LCS is རྒྱལ ཁབ = 2 (macedonian alone would be 1).
    "bo-latin": ("རྒྱལ་ཁབ་ཀྱི་Macedonian", "Macedonianགྱིས་རྒྱལ་ཁབ།",
                 ["རྒྱལ", "ཁབ", "ཀྱི", "macedonian"], ["macedonian", "གྱིས", "རྒྱལ", "ཁབ"], 2),
    # Whitespace words, Arabic comma ، and ؟ split off, the hyphen splits تالاش-تارتىشنى: 8 / 10 tokens;
    # LCS ئومۇمىي خەلق ئاۋاز تالاش تارتىشنى ھەل = 6 (بېرىدۇ≠بېرىش, قىلىدۇ≠قىلىش).
    "ug": ("ئومۇمىي خەلق ئاۋاز بېرىدۇ، تالاش-تارتىشنى ھەل قىلىدۇ؟",
           "بۇ قېتىملىق ئومۇمىي خەلق ئاۋاز بېرىش، تالاش-تارتىشنى ھەل قىلىش.",
           ["ئومۇمىي", "خەلق", "ئاۋاز", "بېرىدۇ", "تالاش", "تارتىشنى", "ھەل", "قىلىدۇ"],
           ["بۇ", "قېتىملىق", "ئومۇمىي", "خەلق", "ئاۋاز", "بېرىش", "تالاش", "تارتىشنى", "ھەل", "قىلىش"], 6),
    # Lowercased Cyrillic, « » and ! split off: 7 / 8 tokens. LCS жексенбі күні македония дауыс береді = 5
    # (starting with сайлаушылар gives only сайлаушылар македония дауыс береді = 4).
    "kk": ("Жексенбі күні сайлаушылар Македония үшін дауыс береді!",
           "Сайлаушылар жексенбі күні «Солтүстік Македония» деп дауыс береді.",
           ["жексенбі", "күні", "сайлаушылар", "македония", "үшін", "дауыс", "береді"],
           ["сайлаушылар", "жексенбі", "күні", "солтүстік", "македония", "деп", "дауыс", "береді"], 5),
    # 5 / 9 tokens; LCS македончууд нэрийг өөрчлөх санал = 4.
    "mn": ("Македончууд нэрийг өөрчлөх санал өгнө.",
           "Македончууд улсынхаа нэрийг өөрчлөх эсэх талаар санал хураалтад оролцоно",
           ["македончууд", "нэрийг", "өөрчлөх", "санал", "өгнө"],
           ["македончууд", "улсынхаа", "нэрийг", "өөрчлөх", "эсэх", "талаар", "санал", "хураалтад", "оролцоно"], 4),
    # Traditional script: Mongolian comma ᠂, full stop ᠃, Manchu comma ᠈ and full stop ᠉ separate words.
    # ᠮᠣᠩᠭᠣᠯ ᠪᠢᠴᠢᠭ ᠤᠯᠤᠰ / ᠮᠣᠩᠭᠣᠯ ᠬᠡᠯᠡ ᠪᠢᠴᠢᠭ ᠮᠣᠩᠭᠣᠯ ᠤᠯᠤᠰ: LCS = all 3 of the prediction.
    "mn-mong": ("ᠮᠣᠩᠭᠣᠯ ᠪᠢᠴᠢᠭ᠈ ᠤᠯᠤᠰ᠉", "ᠮᠣᠩᠭᠣᠯ ᠬᠡᠯᠡ ᠪᠢᠴᠢᠭ᠂ ᠮᠣᠩᠭᠣᠯ ᠤᠯᠤᠰ᠃",
                ["ᠮᠣᠩᠭᠣᠯ", "ᠪᠢᠴᠢᠭ", "ᠤᠯᠤᠰ"], ["ᠮᠣᠩᠭᠣᠯ", "ᠬᠡᠯᠡ", "ᠪᠢᠴᠢᠭ", "ᠮᠣᠩᠭᠣᠯ", "ᠤᠯᠤᠰ"], 3),
    # The genitive suffix after U+202F is a token of its own: ᠮᠣᠩᠭᠣᠯ ᠤᠨ ᠬᠡᠯᠡ / ᠮᠣᠩᠭᠣᠯ ᠬᠡᠯᠡ: LCS = 2.
    "mn-mong-suffix": (f"ᠮᠣᠩᠭᠣᠯ{NNBSP}ᠤᠨ ᠬᠡᠯᠡ", "ᠮᠣᠩᠭᠣᠯ ᠬᠡᠯᠡ",
                       ["ᠮᠣᠩᠭᠣᠯ", "ᠤᠨ", "ᠬᠡᠯᠡ"], ["ᠮᠣᠩᠭᠣᠯ", "ᠬᠡᠯᠡ"], 2),
}


@pytest.mark.parametrize("case", sorted(HAND))
def test_rouge_l_hand_counted(case):
    pred, ref, pred_tokens, ref_tokens, lcs = HAND[case]
    assert rouge_tokens(pred) == pred_tokens and rouge_tokens(ref) == ref_tokens
    assert lcs_length(pred_tokens, ref_tokens) == lcs
    m, n = len(pred_tokens), len(ref_tokens)
    p, r = Fraction(lcs, m), Fraction(lcs, n)
    assert rouge_l(pred, ref) == (float(2 * p * r / (p + r)), float(p), float(r))


def test_tokens_tibetan_marks_mongolian_variation_selector():
    # Every shad variant and the gter tsheg are boundaries; the head mark ༄༅ is no token.
    assert rouge_tokens("༄༅། །ཀ༑ཁ༔ག༏ང༐ཅ༎ཆ") == ["ཀ", "ཁ", "ག", "ང", "ཅ", "ཆ"]
    # A free variation selector (U+180B, a combining mark) stays inside its word.
    assert rouge_tokens("ᠭ\u180bᠠ ᠤᠯᠤᠰ") == ["ᠭ\u180bᠠ", "ᠤᠯᠤᠰ"]


def test_lcs_textbook_example():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # CLRS 15.4: BCBA
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_empty_sides_and_per_sample_mean():
    assert rouge_l("", "今天") == rouge_l("。！", "今天") == rouge_l("今天", "") == (0.0, 0.0, 0.0)
    samples = [HAND["zh"], HAND["kk"], ("", "今天", [], ["今", "天"], 0)]
    stats = rouge_l_stats([s[0] for s in samples], [s[1] for s in samples])
    # Per sample (F, P, R): zh (10/11, 1, 5/6), kk (2/3, 5/7, 5/8), empty (0, 0, 0); then the mean, in percent.
    expected = {"f": (10 / 11 + 2 / 3) / 3, "p": (1 + 5 / 7) / 3, "r": (5 / 6 + 5 / 8) / 3}
    assert rouge_l_score(stats.sum(0)) == pytest.approx({k: 100 * v for k, v in expected.items()}, rel=1e-12)


def _lines(lang: str, n: int = 30) -> list[str]:
    return (NTREX / f"ntrex128.dev.{lang}").read_text(encoding="utf-8").splitlines()[:n]


def _system(refs: list[str]) -> list[str]:
    """A stand-in system: the first two thirds of even references, the previous reference for odd ones."""
    return [r[: 2 * len(r) // 3] if i % 2 == 0 else refs[i - 1] for i, r in enumerate(refs)]


def _sacrebleu_cli(tmp_path, hyps, refs, metric: str, tokenize: str) -> float:
    (tmp_path / "hyp").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    (tmp_path / "ref").write_text("\n".join(refs) + "\n", encoding="utf-8")
    out = subprocess.run([str(SACREBLEU), str(tmp_path / "ref"), "-i", str(tmp_path / "hyp"), "-m", metric,
                          "--tokenize", tokenize, "--format", "json", "--width", "6"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["score"]


@pytest.mark.parametrize("lang,cli_tokenize", [("zh", "zh"), ("ug", "intl"), ("kk", "intl"), ("mn", "intl"),
                                               ("bo", "none")])
def test_chrf_and_bleu_equal_sacrebleu_command_line(tmp_path, lang, cli_tokenize):
    refs = _lines(lang)
    hyps = _system(refs)
    for metric in (chrf(), bleu(lang)):
        ours = metric.score(metric.stats(hyps, refs).sum(0))
        if metric.name == "bleu" and lang == "bo":
            # Tibetan BLEU is sacrebleu's tok:none on the syllables, so the CLI gets the segmented text.
            cli = _sacrebleu_cli(tmp_path, [tibetan_syllables(h) for h in hyps],
                                 [tibetan_syllables(r) for r in refs], "bleu", "none")
        else:
            cli = _sacrebleu_cli(tmp_path, hyps, refs, metric.name, cli_tokenize)
        assert 1 < ours < 99, (metric.name, ours)  # a score that can tell a wrong computation apart
        assert ours == pytest.approx(cli, abs=1e-6), (metric.name, metric.signature)
    assert f"tok:{cli_tokenize}" in bleu(lang).signature


def test_bleu_tokenizer_per_language():
    assert [bleu_tokenizer(c) for c in ("zh", "bo", "ug", "kk", "mn", "en")] == [
        "zh", "bo-syllables", "intl", "intl", "intl", "13a"]
    # Tibetan syllables for BLEU keep case (BLEU is case-sensitive) and drop tsheg/shad.
    assert tibetan_syllables("Macedonianགྱིས་རྒྱལ་ཁབ།") == "Macedonian གྱིས རྒྱལ ཁབ"


def _metric_stats(hyps, refs, lang="kk"):
    """(stats, score) per single-number metric, as the bootstrap gets them."""
    b, c = bleu(lang), chrf()
    rouge = rouge_l_stats(hyps, refs)
    return {"chrf": (c.stats(hyps, refs), c.score), "bleu": (b.stats(hyps, refs), b.score),
            "rouge_l_f": (rouge, lambda t: rouge_l_score(t)["f"])}


def test_bootstrap_identical_systems_differ_by_exactly_zero():
    refs = _lines("kk")
    stats = _metric_stats(_system(refs), refs)
    for name, (s, score) in stats.items():
        d = paired_bootstrap(s, s.copy(), score)
        assert (d.delta, d.low, d.high, d.p_value) == (0.0, 0.0, 0.0, 1.0), name


def test_bootstrap_system_better_on_every_example_is_significant():
    refs = _lines("kk")
    halves = [" ".join(r.split()[: len(r.split()) // 2]) for r in refs]
    a, b = _metric_stats(refs, refs), _metric_stats(halves, refs)  # A: the references themselves
    assert all(a["rouge_l_f"][0][:, 0] > b["rouge_l_f"][0][:, 0])  # A wins every example
    for name, (stats_a, score) in a.items():
        d = paired_bootstrap(stats_a, b[name][0], score)
        assert d.delta > 0 and 0 < d.low <= d.delta <= d.high, (name, d)
        assert d.p_value < 0.05, (name, d)


def _mean(total):
    return total[0] / total[1]


def test_bootstrap_symmetric_systems():
    # A wins the even examples by 0.5, B the odd ones by the same: no difference, an interval around zero.
    f = np.array([[1.0, 0.5], [0.5, 1.0]] * 20)
    a, b = np.stack([f[:, 0], np.ones(40)], 1), np.stack([f[:, 1], np.ones(40)], 1)
    d = paired_bootstrap(a, b, _mean)
    assert d.delta == 0 and d.low < 0 < d.high and d.p_value == 1.0


def test_bootstrap_seed_fixes_the_resamples():
    rng = np.random.default_rng(0)
    a, b = np.stack([rng.random(50), np.ones(50)], 1), np.stack([rng.random(50), np.ones(50)], 1)
    d = paired_bootstrap(a, b, _mean, seed=1)
    assert paired_bootstrap(a, b, _mean, seed=1) == d
    assert paired_bootstrap(a, b, _mean, seed=2) != d
    assert 0 < d.p_value < 1 and d.low < d.delta < d.high
