"""Line-level text handling for prepare: decoding, NFC, bad-line detection and sentence boundaries.

Nothing here drops text silently: every function that rejects a line says why with a reason string that
prepare counts per input file.
"""

from __future__ import annotations

import re
import unicodedata

# Sentence terminators per script: Tibetan shad and its variants (། ༎ ༏ ༐ ༑), traditional Mongolian full stop and
# Manchu full stop (᠃ U+1803, ᠉ U+1809; the Mongolian comma ᠂ only separates clauses), Chinese full-width (。！？),
# Arabic-script question mark and Urdu/Uyghur full stop (؟ ۔), and the Latin/Cyrillic . ! ?
# Tibetan: a shad closes a clause or a sentence alike (the script has no separate full stop), so every shad is a
# sentence end; a run of marks, also with spaces between them as in "། །", ends one sentence, after its last mark.
SENTENCE_END_CHARS = "།༎༏༐༑᠃᠉。！？؟۔.!?"

# C0/C1 control characters other than tab (kept: the tokenizer treats it as whitespace), and U+FFFD, the
# mark a lossy decoder left behind: either means the line is not clean text.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ufffd]")

# Characters that render as nothing: zero-width space / non-joiner / joiner, word joiner, the BOM used as a
# zero-width no-break space, and the Mongolian vowel separator. A line made only of these (and whitespace) has no
# text, yet tokenises to "▁ <unk>": it is skipped as ZERO_WIDTH_ONLY. Inside real text they stay (ZWJ/ZWNJ shape
# Arabic-script and Indic words).
_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u180e"
BOM = b"\xef\xbb\xbf"   # UTF-8 byte-order mark: stripped from the start of an input file, never text

# Reasons a line is skipped (the keys of the per-file skip counts in index.json).
INVALID_UTF8 = "invalid_utf8"
EMPTY = "empty"
CONTROL_CHARS = "control_chars"
SPECIAL_TOKEN_TEXT = "special_token_text"
TOO_LONG_PAIR = "parallel_side_too_long"
INVALID_JSON = "invalid_json"
ZERO_WIDTH_ONLY = "zero_width_only"


def clean_line(raw: bytes) -> tuple[str | None, str | None]:
    """Decode one raw line (without its newline) and NFC-normalise it.

    Returns `(text, None)` for a usable line (surrounding whitespace stripped) or `(None, reason)` where
    reason is INVALID_UTF8, EMPTY or CONTROL_CHARS.
    """
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, INVALID_UTF8
    return clean_text(text)


def clean_text(text: str) -> tuple[str | None, str | None]:
    """NFC-normalise and strip an already decoded string; `(None, reason)` if it is empty, made only of
    zero-width characters, or has control garbage."""
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        return None, EMPTY
    if not text.strip(_ZERO_WIDTH + " \t"):
        return None, ZERO_WIDTH_ONLY
    if _CONTROL.search(text):
        return None, CONTROL_CHARS
    return text, None


def is_sentence_end(text: str, pos: int) -> bool:
    """True if a sentence ends exactly at character offset `pos` of `text`: the character before it is a
    terminator and the next one that is not a space is not (so "?!", "།།" and "། །" end one sentence, after the
    last mark)."""
    if pos <= 0 or pos > len(text) or text[pos - 1] not in SENTENCE_END_CHARS:
        return False
    rest = text[pos:].lstrip()
    return not rest or rest[0] not in SENTENCE_END_CHARS


def sentence_cut_points(text: str, offsets: list[tuple[int, int]]) -> list[int]:
    """Token indices j (0 < j < len(offsets)) such that a sentence ends between token j-1 and token j.

    `offsets` are the tokenizer's character spans of the tokens of `text`.
    """
    return [j for j in range(1, len(offsets)) if is_sentence_end(text, offsets[j - 1][1])]


def split_into_pieces(n_tokens: int, cut_points: list[int], budget: int) -> list[tuple[int, int]]:
    """Split tokens [0, n_tokens) into consecutive pieces of at most `budget` tokens.

    Each piece ends at the last sentence cut point that keeps it within budget; a single sentence longer
    than the budget is cut into budget-sized token windows. Returns [(start, stop), ...] covering every token.
    """
    if n_tokens <= budget:
        return [(0, n_tokens)]
    pieces = []
    start, k = 0, 0
    cuts = [c for c in cut_points if 0 < c < n_tokens] + [n_tokens]
    while start < n_tokens:
        while k < len(cuts) and cuts[k] <= start:
            k += 1
        best = None
        while k < len(cuts) and cuts[k] - start <= budget:
            best = cuts[k]
            k += 1
        stop = best if best is not None else min(start + budget, n_tokens)
        pieces.append((start, stop))
        start = stop
    return pieces
