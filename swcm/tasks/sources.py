"""Task JSONL from data in other layouts: aligned parallel text files, and SQuAD-style reading comprehension."""

from __future__ import annotations

import json
from pathlib import Path

from swcm.tasks.jsonl import DataError


def _lines(path: Path) -> list[str]:
    """The lines of UTF-8 file `path`, without a leading byte-order mark; DataError naming a bad file or line."""
    try:
        text = path.read_bytes().decode("utf-8-sig")   # a byte-order mark (Windows editors) is not text
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise DataError(path, line, "not valid UTF-8") from None
    return text.splitlines()


def parallel_records(src: str | Path, tgt: str | Path, src_lang: str, tgt_lang: str) -> list[dict]:
    """One `{source, target, src_lang, tgt_lang}` record per aligned line pair (pairs with an empty side are
    skipped); DataError if the files differ in length."""
    a, b = _lines(Path(src)), _lines(Path(tgt))
    if len(a) != len(b):
        raise DataError(tgt, None, f"{len(b)} lines, but {src} has {len(a)} (expected aligned files)")
    return [{"source": x.strip(), "target": y.strip(), "src_lang": src_lang, "tgt_lang": tgt_lang}
            for x, y in zip(a, b) if x.strip() and y.strip()]


def squad_records(path: str | Path, lang: str) -> list[dict]:
    """One MRC record `{question, context, answer, lang}` per SQuAD-style JSONL line (`question`, `context`,
    `answers.text[0]`); DataError naming the line for anything else."""
    path = Path(path)
    records = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            answer = obj["answers"]["text"][0]
            question, context = obj["question"], obj["context"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise DataError(path, number, "expected a JSON object with question, context and answers.text[0]"
                            ) from None
        records.append({"question": question, "context": context, "answer": answer, "lang": lang})
    return records


def records_text(records: list[dict]) -> str:
    """The JSONL text of `records`."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
