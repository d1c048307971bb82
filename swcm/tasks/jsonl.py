"""Task data and predictions as JSONL: reading them with line-exact validation, writing them atomically.

A task file holds one example per line, in one of two forms (blank lines are skipped):

    {"source": "...", "target": "...", "src_lang": "zh", "tgt_lang": "bo"}      summarisation, MT, any seq2seq
    {"question": "...", "context": "...", "answer": "...", "lang": "bo"}         reading comprehension (MRC)

An MRC line becomes source = question + MRC_SEPARATOR + context, target = answer, src_lang = tgt_lang = lang.
The separator is XLM-R's own sentence-pair separator `</s></s>`, which the tokenizer reads as two `</s>` tokens,
so the encoder sees `<s> <lang> question </s></s> context </s>`. The question comes first: truncation to the
length limit cuts the end of the context, never the question.

Other fields (an "id", say) are ignored. A prediction file is a task file in the first form whose lines also
have "prediction" (what `launch/evaluate.py --out` writes) and, when a model scored the references, "nll" (the
reference's summed token NLL in nats) and "tokens" (its scored tokens): see `swcm.tasks.likelihood`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterator

MRC_SEPARATOR = " </s></s> "
SEQ2SEQ_FIELDS = ("source", "target", "src_lang", "tgt_lang")
MRC_FIELDS = ("question", "context", "answer", "lang")
_SEQ2SEQ_FORM = f"a line has {', '.join(SEQ2SEQ_FIELDS)}; or, for MRC, {', '.join(MRC_FIELDS)}"
_MRC_FORM = f"an MRC line has {', '.join(MRC_FIELDS)}"
_PREDICTION_FORM = f"a prediction line has {', '.join(SEQ2SEQ_FIELDS)}, prediction"


class DataError(ValueError):
    """A task or prediction file that cannot be used; the message is `<file>:<line>: <what was expected>`."""

    def __init__(self, path: str | Path, line: int | None, what: str):
        super().__init__(f"{path}:{line}: {what}" if line else f"{path}: {what}")


@dataclass(frozen=True)
class Example:
    """One seq2seq example; `line` is its 1-based line in the file it was read from."""
    source: str
    target: str
    src_lang: str
    tgt_lang: str
    line: int


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for each non-blank line; DataError on a line that is not UTF-8 JSON object."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except OSError as e:
        raise DataError(path, None, f"cannot read the file ({e.strerror})") from None
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(path, number, f"not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})"
                            ) from None
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, number, f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(path, number, f"expected a JSON object, got {_json_type(obj)}")
        yield number, obj


def _strings(obj: dict, fields: tuple[str, ...], path: Path, line: int, form: str, allow_empty: Collection[str] = ()
             ) -> list[str]:
    """The string values of `fields`; DataError for a missing, non-string or (unless allowed) empty one."""
    values = []
    for field in fields:
        if field not in obj:
            raise DataError(path, line, f"missing field {field!r} ({form})")
        value = obj[field]
        if not isinstance(value, str):
            raise DataError(path, line, f"field {field!r} must be a string, got {_json_type(value)}")
        if not value.strip() and field not in allow_empty:
            raise DataError(path, line, f"field {field!r} is empty")
        values.append(value)
    return values


def _check_langs(example: Example, lang_codes: Collection[str] | None, path: Path) -> Example:
    for field in ("src_lang", "tgt_lang"):
        code = getattr(example, field)
        if lang_codes is not None and code not in lang_codes:
            raise DataError(path, example.line, f"{field} {code!r} is not a language of the model "
                                                f"(one of {', '.join(sorted(lang_codes))})")
    return example


def _example(obj: dict, path: Path, line: int) -> Example:
    if "question" in obj or "context" in obj:
        question, context, answer, lang = _strings(obj, MRC_FIELDS, path, line, _MRC_FORM)
        return Example(question + MRC_SEPARATOR + context, answer, lang, lang, line)
    return Example(*_strings(obj, SEQ2SEQ_FIELDS, path, line, _SEQ2SEQ_FORM), line)


def _nonempty(items: list, path: Path) -> list:
    if not items:
        raise DataError(path, None, "no examples (the file is empty)")
    return items


def read_examples(path: str | Path, lang_codes: Collection[str] | None = None) -> list[Example]:
    """Every example of the task file `path`, in file order. Raises DataError naming the file and line for
    invalid UTF-8 or JSON, a missing, non-string or empty field, a language not in `lang_codes` (when given),
    or a file without examples."""
    path = Path(path)
    return _nonempty([_check_langs(_example(obj, path, n), lang_codes, path) for n, obj in _objects(path)], path)


def read_predictions(path: str | Path, lang_codes: Collection[str] | None = None
                     ) -> tuple[list[Example], list[str]]:
    """The examples and predictions of a prediction file, validated as `read_examples` (a prediction may be
    empty: a model can generate nothing)."""
    path = Path(path)
    examples, predictions = [], []
    for n, obj in _objects(path):
        *fields, prediction = _strings(obj, SEQ2SEQ_FIELDS + ("prediction",), path, n, _PREDICTION_FORM,
                                       allow_empty=("prediction",))
        examples.append(_check_langs(Example(*fields, n), lang_codes, path))
        predictions.append(prediction)
    return _nonempty(examples, path), predictions


def read_likelihood(path: str | Path):
    """The (n, 2) [nll, tokens] rows of a prediction file whose every line has them, None when no line has them;
    DataError for a line with only one of them, a value that is not a non-negative number, or a file where some
    lines have them and others not."""
    import numpy as np

    path = Path(path)
    rows = []
    for n, obj in _objects(path):
        present = [k in obj for k in ("nll", "tokens")]
        if any(present) != all(present):
            raise DataError(path, n, "expected both 'nll' and 'tokens' or neither")
        if not all(present):
            rows.append(None)
            continue
        nll, tokens = obj["nll"], obj["tokens"]
        if not (isinstance(nll, (int, float)) and not isinstance(nll, bool) and nll >= 0):
            raise DataError(path, n, f"field 'nll' must be a non-negative number, got {nll!r}")
        if not (isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 1):
            raise DataError(path, n, f"field 'tokens' must be a positive integer, got {tokens!r}")
        rows.append((float(nll), float(tokens)))
    if all(r is None for r in rows):
        return None
    if any(r is None for r in rows):
        first = next(i for i, r in enumerate(rows) if r is None)
        raise DataError(path, None, f"example {first + 1} has no 'nll' but others have (expected all or none)")
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def check_same_inputs(examples: list[Example], path: str | Path, other: list[Example], other_path: str | Path
                      ) -> None:
    """Raise DataError unless `other` (read from `other_path`) holds the inputs of `examples` (read from `path`:
    source, target, target language) in the same order, as a paired comparison needs."""
    if len(other) != len(examples):
        raise DataError(other_path, None, f"{len(other)} examples, expected {len(examples)} (the same inputs)")
    for mine, theirs in zip(examples, other):
        for field in ("source", "target", "tgt_lang"):
            if getattr(mine, field) != getattr(theirs, field):
                raise DataError(other_path, theirs.line, f"{field} differs from {path}:{mine.line} "
                                                         "(expected the same inputs in the same order)")


def prediction_lines(examples: list[Example], predictions: list[str], likelihood=None) -> str:
    """A prediction file's text: one JSON line per example, in order; with `likelihood` ((n, 2) rows of
    `swcm.tasks.likelihood.likelihood_stats`) each line also has "nll" and "tokens"."""
    lines = []
    for i, (e, p) in enumerate(zip(examples, predictions, strict=True)):
        record = {"source": e.source, "target": e.target, "prediction": p, "src_lang": e.src_lang,
                  "tgt_lang": e.tgt_lang}
        if likelihood is not None:
            record.update(nll=float(likelihood[i, 0]), tokens=int(likelihood[i, 1]))
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines)
