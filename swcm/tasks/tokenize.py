"""The tokens ROUGE-L counts, for every language swcm scores (and Tibetan's BLEU segmentation).

The rules go by script, not by the language tag, so one function serves bo, ug, kk, mn, zh and the mixed text
they contain (Latin names glued to Tibetan syllables, Chinese inside Uyghur news):

1. NFKC, then lowercase (only cased scripts change: Latin, Cyrillic; full-width ２０１８ becomes 2018).
2. Punctuation and symbols (Unicode categories P* and S*) and whitespace are boundaries, never tokens. This
   covers the Tibetan tsheg ་ and shad ། (and ༎ ༏ ༐ ༑ ༔, the head marks ༄ ༅), the Mongolian ᠂ ᠃ ᠈ ᠉ ᠀,
   the Arabic-script ، ؛ ؟, guillemets « » and ASCII punctuation.
3. Every CJK ideograph is a token of its own (Chinese by character). A run of Latin letters or digits inside
   Chinese text stays one word: "GDP增长5%" -> gdp 增 长 5.
4. A run of Tibetan script is cut from whatever touches it, so its syllables stand alone:
   "Macedonianགྱིས་" -> macedonian གྱིས.
5. Everything else is split on whitespace: Uyghur, Kazakh, Mongolian in Cyrillic or traditional script. The
   narrow no-break space U+202F, which attaches Mongolian case suffixes, becomes a space under NFKC, so a
   suffix is its own token: "ᠮᠣᠩᠭᠣᠯ\u202fᠤᠨ" -> ᠮᠣᠩᠭᠣᠯ ᠤᠨ. Combining marks (Tibetan vowels and subjoined
   letters, Mongolian variation selectors) stay inside their token.

`rouge-score`'s default tokenizer keeps only [a-z0-9] and so drops all of these scripts; it is not used.
"""

from __future__ import annotations

import re
import unicodedata

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_TIBETAN = "\u0f00-\u0fff"
_ISOLATE = re.compile(f"([{_HAN}]|[{_TIBETAN}]+)")


def _is_boundary(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch)[0] in "PSZ"


def rouge_tokens(text: str, lowercase: bool = True) -> list[str]:
    """The tokens of `text` under the rules above (lowercased unless `lowercase=False`)."""
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    text = "".join(" " if _is_boundary(ch) else ch for ch in text)
    return _ISOLATE.sub(r" \1 ", text).split()
