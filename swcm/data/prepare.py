"""Raw text -> tokenised webdataset shards + lengths.npz + index.json (the work behind launch/prepare_data.py).

Inputs: monolingual files (one document per line, one language per file), aligned parallel files (line i of
one is the translation of line i of the other) and parallel JSONL ({"src", "tgt", "src_lang", "tgt_lang"} per
line). Every line is decoded, NFC-normalised, checked and tokenised with the model's tokenizer (no special
tokens); a monolingual document longer than `max_len - 3` tokens (room for `<s> <lang> ... </s>`) is split into
pieces at sentence ends, or into token windows inside a sentence longer than that. Skipped lines are counted
per file and reason; an input that yields nothing is an error.

The shard set is built in a temporary directory beside the output and moved into place only when complete, so
a failed run (any error, Ctrl-C) leaves a previous shard set as it was and no partial one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import webdataset as wds

from swcm.atomic_write import write_bytes_atomic
from swcm.data import text as T
from swcm.data.shards import FORMAT, FORMAT_VERSION, INDEX_NAME, LENGTHS_NAME, DataError, sha256_file

log = logging.getLogger(__name__)

SPECIAL_TOKENS_PER_SAMPLE = 3   # <s> <lang> ... </s> on the encoder side (the decoder side needs 3 as well)
TOKENIZE_CHUNK = 1024           # lines per batch-tokenizer call: big enough to amortise the Rust call


@dataclass
class InputReport:
    """What became of one input (a mono file, a parallel file pair or a JSONL file)."""
    files: list[str]
    stream: str
    lines: int = 0
    used_lines: int = 0
    samples: int = 0
    split_lines: int = 0
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)   # file -> reason -> count

    def skip(self, file: str, reason: str) -> None:
        per_file = self.skipped.setdefault(file, {})
        per_file[reason] = per_file.get(reason, 0) + 1

    def to_dict(self) -> dict:
        return {"files": self.files, "stream": self.stream, "lines": self.lines, "used_lines": self.used_lines,
                "samples": self.samples, "split_lines": self.split_lines, "skipped": self.skipped}


class StreamShardWriter:
    """Writes the samples of one stream into tar shards of at most `samples_per_shard` samples, each written
    under a temporary name and renamed when complete; records per-shard counts, sha256 and lengths."""

    def __init__(self, out_dir: Path, stream: str, samples_per_shard: int):
        self.out_dir, self.stream, self.samples_per_shard = out_dir, stream, samples_per_shard
        self.prefix = stream.replace("/", "-")
        self.shards: dict[str, dict] = {}
        self.lengths: dict[str, np.ndarray] = {}
        self._writer = None
        self._name = None
        self._count = 0
        self._tokens = 0
        self._lens: list = []

    def _open(self) -> None:
        self._name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tmp = self.out_dir / f".{self._name}.tmp"
        # A fixed integer mtime in plain ustar: no per-member PAX header (half the headers a reader parses) and
        # byte-identical shards, hence the same sha256, from the same input.
        self._writer = wds.TarWriter(str(self._tmp), mtime=0, format=tarfile.USTAR_FORMAT)
        self._count, self._tokens, self._lens = 0, 0, []

    def write(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Append one sample: `meta` (JSON) and token arrays by field name (`ids` or `src` + `tgt`)."""
        if self._writer is None:
            self._open()
        sample = {"__key__": f"{self._count:08d}", "meta.json": json.dumps(meta, ensure_ascii=False).encode()}
        for key, ids in arrays.items():
            sample[f"{key}.i32"] = np.asarray(ids, dtype="<i4").tobytes()
        self._writer.write(sample)
        lens = [len(a) for a in arrays.values()]
        self._lens.append(lens[0] if len(lens) == 1 else lens)
        self._tokens += sum(lens)
        self._count += 1
        if self._count == self.samples_per_shard:
            self.close()

    def close(self) -> None:
        """Finish the open shard (if any): close the tar, hash it, rename it to its final name."""
        if self._writer is None:
            return
        self._writer.close()
        final = self.out_dir / self._name
        self._tmp.replace(final)
        self.shards[self._name] = {"stream": self.stream, "samples": self._count, "tokens": self._tokens,
                                   "bytes": final.stat().st_size, "sha256": sha256_file(final)}
        self.lengths[self._name] = np.asarray(self._lens, dtype=np.int32)
        self._writer = None


def _raw_lines(path: Path) -> list[bytes]:
    """The raw lines of a file (a final newline does not start an extra line); DataError if it is empty."""
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read input ({e})") from None
    if not blob.strip():
        raise DataError(f"{path}: input file is empty")
    lines = blob.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


JSONL_FIELDS = ("src", "tgt", "src_lang", "tgt_lang")


@dataclass
class JsonlInput:
    """A parsed parallel JSONL file: (line, (src, reason), (tgt, reason)) per (src_lang, tgt_lang), skip counts."""
    path: Path
    nbytes: int
    by_pair: dict[tuple[str, str], list]
    bad: dict[str, int]


def read_jsonl(path: Path) -> JsonlInput:
    """Parse a parallel JSONL file of {"src", "tgt", "src_lang", "tgt_lang"} records.

    A line that is not UTF-8, not a JSON object or lacks a field is skipped and counted (`invalid_utf8`,
    `empty`, `invalid_json`); a field that is present but not a string (a number, a list, null) is a DataError
    naming the file and line -- it would otherwise be trained on as the text of that value. DataError too if
    the file is empty or has no usable record.
    """
    raw = _raw_lines(path)
    by_pair: dict[tuple[str, str], list] = {}
    bad: dict[str, int] = {}
    for i, line in enumerate(raw, start=1):
        try:
            rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            reason = T.INVALID_UTF8
        except json.JSONDecodeError:
            reason = T.EMPTY if not line.strip() else T.INVALID_JSON
        else:
            reason = None if isinstance(rec, dict) and all(k in rec for k in JSONL_FIELDS) else T.INVALID_JSON
        if reason:
            bad[reason] = bad.get(reason, 0) + 1
            continue
        for k in JSONL_FIELDS:
            if not isinstance(rec[k], str):
                raise DataError(f"{path}:{i}: field {k!r} is {json.dumps(rec[k], ensure_ascii=False)[:40]}, "
                                f"expected a string")
        by_pair.setdefault((rec["src_lang"], rec["tgt_lang"]), []).append(
            (i, T.clean_text(rec["src"]), T.clean_text(rec["tgt"])))
    if not by_pair:
        raise DataError(f"{path}: no usable JSONL record with src, tgt, src_lang, tgt_lang ({bad or 'none'})")
    return JsonlInput(path, sum(len(x) + 1 for x in raw), by_pair, bad)


class Preparer:
    """Tokenises inputs and writes one stream of shards per language (mono) or language pair (parallel)."""

    def __init__(self, tokenizer, out_dir: Path, max_len: int, samples_per_shard: int, progress=None):
        if max_len <= SPECIAL_TOKENS_PER_SAMPLE:
            raise DataError(f"--max-len {max_len}: must exceed the {SPECIAL_TOKENS_PER_SAMPLE} special tokens")
        self.tok, self.out_dir = tokenizer, out_dir
        self.budget = max_len - SPECIAL_TOKENS_PER_SAMPLE
        self.samples_per_shard = samples_per_shard
        self.writers: dict[str, StreamShardWriter] = {}
        self.reports: list[InputReport] = []
        self.progress = progress
        # Text that tokenises to a special id (a literal "<mask>" or "<s>") would smuggle control tokens into
        # the model's input; <unk> is the one special that stands for real text.
        self.forbidden = np.array(sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}))

    def _writer(self, stream: str) -> StreamShardWriter:
        if stream not in self.writers:
            self.writers[stream] = StreamShardWriter(self.out_dir, stream, self.samples_per_shard)
        return self.writers[stream]

    def _encode(self, texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
        enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
        return enc["input_ids"], enc["offset_mapping"]

    def _content_problem(self, ids: list[int]) -> str | None:
        if not ids:
            return T.EMPTY
        if np.isin(np.asarray(ids), self.forbidden).any():
            return T.SPECIAL_TOKEN_TEXT
        return None

    def _advance(self, nbytes: int) -> None:
        if self.progress is not None:
            self.progress.update(nbytes)

    def add_mono(self, lang: str, path: Path) -> InputReport:
        """Tokenise a monolingual file into stream `mono/<lang>`; pieces get ids `file:line[:piece]`."""
        stream = f"mono/{lang}"
        report = InputReport([str(path)], stream)
        writer = self._writer(stream)
        raw = _raw_lines(path)
        report.lines = len(raw)
        for start in range(0, len(raw), TOKENIZE_CHUNK):
            chunk = raw[start:start + TOKENIZE_CHUNK]
            good: list[tuple[int, str]] = []
            for i, line in enumerate(chunk, start=start + 1):
                text, reason = T.clean_line(line)
                if reason:
                    report.skip(str(path), reason)
                else:
                    good.append((i, text))
            ids_list, offsets_list = self._encode([t for _, t in good]) if good else ([], [])
            for (lineno, text), ids, offsets in zip(good, ids_list, offsets_list):
                problem = self._content_problem(ids)
                if problem:
                    report.skip(str(path), problem)
                    continue
                pieces = T.split_into_pieces(len(ids), T.sentence_cut_points(text, offsets), self.budget)
                report.used_lines += 1
                report.split_lines += len(pieces) > 1
                for k, (a, b) in enumerate(pieces):
                    sid = f"{path}:{lineno}" + (f":{k}" if len(pieces) > 1 else "")
                    writer.write({"id": sid, "task": "mono", "lang": lang}, {"ids": ids[a:b]})
                    report.samples += 1
            self._advance(sum(len(x) + 1 for x in chunk))
        return self._finish(report)

    def add_parallel(self, src_lang: str, tgt_lang: str, src_path: Path, tgt_path: Path) -> InputReport:
        """Tokenise aligned files into stream `parallel/<src>-<tgt>`; ids are `srcfile+tgtfile:line`. A pair with a side
        that is bad or longer than max_len - 3 tokens is skipped and counted (pairs are never split)."""
        stream = f"parallel/{src_lang}-{tgt_lang}"
        report = InputReport([str(src_path), str(tgt_path)], stream)
        src_raw, tgt_raw = _raw_lines(src_path), _raw_lines(tgt_path)
        if len(src_raw) != len(tgt_raw):
            raise DataError(f"misaligned parallel files: {src_path} has {len(src_raw)} lines, {tgt_path} has "
                            f"{len(tgt_raw)} lines (line i of one must translate line i of the other)")
        report.lines = len(src_raw)
        pairs = []
        for i, (s, t) in enumerate(zip(src_raw, tgt_raw), start=1):
            pairs.append((i, T.clean_line(s), T.clean_line(t)))
        self._write_pairs(report, stream, pairs, str(src_path), str(tgt_path), id_file=f"{src_path}+{tgt_path}")
        self._advance(sum(len(x) + 1 for x in src_raw) + sum(len(x) + 1 for x in tgt_raw))
        return self._finish(report)

    def add_parallel_jsonl(self, jsonl: JsonlInput) -> list[InputReport]:
        """Tokenise a parsed JSONL file (`read_jsonl`) into one stream per language pair; ids are `file:line`."""
        reports = []
        for (sl, tl), pairs in sorted(jsonl.by_pair.items()):
            stream = f"parallel/{sl}-{tl}"
            report = InputReport([str(jsonl.path)], stream, lines=len(pairs))
            if not reports:   # file-level problems are reported once, with the first pair's stream
                report.lines += sum(jsonl.bad.values())
                report.skipped[str(jsonl.path)] = dict(jsonl.bad)
            self._write_pairs(report, stream, pairs, str(jsonl.path), str(jsonl.path), id_file=str(jsonl.path))
            reports.append(self._finish(report))
        self._advance(jsonl.nbytes)
        return reports

    def _write_pairs(self, report: InputReport, stream: str, pairs: list, src_file: str, tgt_file: str,
                     id_file: str) -> None:
        src_lang, tgt_lang = stream.split("/", 1)[1].split("-", 1)
        writer = self._writer(stream)
        for start in range(0, len(pairs), TOKENIZE_CHUNK):
            good = []
            for lineno, (s, s_reason), (t, t_reason) in pairs[start:start + TOKENIZE_CHUNK]:
                if s_reason:
                    report.skip(src_file, s_reason)
                if t_reason:
                    report.skip(tgt_file, t_reason)
                if not (s_reason or t_reason):
                    good.append((lineno, s, t))
            if not good:
                continue
            src_ids, _ = self._encode([g[1] for g in good])
            tgt_ids, _ = self._encode([g[2] for g in good])
            for (lineno, _, _), s_ids, t_ids in zip(good, src_ids, tgt_ids):
                problems = [(f, p) for f, p in ((src_file, self._content_problem(s_ids)),
                                                (tgt_file, self._content_problem(t_ids))) if p]
                for f, ids in ((src_file, s_ids), (tgt_file, t_ids)):
                    if len(ids) > self.budget:
                        problems.append((f, T.TOO_LONG_PAIR))
                if problems:
                    for f, p in problems:
                        report.skip(f, p)
                    continue
                writer.write({"id": f"{id_file}:{lineno}", "task": "parallel", "src_lang": src_lang,
                              "tgt_lang": tgt_lang}, {"src": s_ids, "tgt": t_ids})
                report.used_lines += 1
                report.samples += 1

    def _finish(self, report: InputReport) -> InputReport:
        skipped = sum(n for per_file in report.skipped.values() for n in per_file.values())
        if report.samples == 0:
            raise DataError(f"{', '.join(report.files)}: no usable text ({report.lines} lines; skipped: "
                            f"{report.skipped or 'none'})")
        log.info("%s -> %s: %d lines, %d samples (%d lines split), %d skipped %s", " + ".join(report.files),
                 report.stream, report.lines, report.samples, report.split_lines, skipped, report.skipped or "")
        self.reports.append(report)
        return report

    def finish(self, tokenizer_info: dict, args: list[str] | None, max_len: int) -> dict:
        """Close all shards, write lengths.npz and then, last and atomically, index.json; return the index."""
        shards: dict[str, dict] = {}
        lengths: dict[str, np.ndarray] = {}
        streams: dict[str, dict] = {}
        for stream, writer in sorted(self.writers.items()):
            writer.close()
            if not writer.shards:
                continue
            task, langs = stream.split("/", 1)
            streams[stream] = {"task": task, "langs": langs.split("-"), "shards": sorted(writer.shards),
                               "samples": sum(s["samples"] for s in writer.shards.values()),
                               "tokens": sum(s["tokens"] for s in writer.shards.values())}
            shards.update(writer.shards)
            lengths.update(writer.lengths)
        buf = io.BytesIO()
        np.savez(buf, **{Path(name).stem: arr for name, arr in lengths.items()})
        write_bytes_atomic(self.out_dir / LENGTHS_NAME, buf.getvalue())
        totals: dict[str, dict] = {"mono": {}, "parallel": {}}
        for stream, info in streams.items():
            totals[info["task"]]["-".join(info["langs"])] = {"samples": info["samples"], "tokens": info["tokens"]}
        totals["all"] = {"samples": sum(s["samples"] for s in streams.values()),
                         "tokens": sum(s["tokens"] for s in streams.values())}
        index = {
            "format": FORMAT, "version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "tokenizer": tokenizer_info, "max_len": max_len, "samples_per_shard": self.samples_per_shard,
            "lengths": {"file": LENGTHS_NAME, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()},
            "streams": streams, "shards": shards, "totals": totals,
            "inputs": [r.to_dict() for r in self.reports], "args": args or [],
        }
        write_bytes_atomic(self.out_dir / INDEX_NAME, json.dumps(index, indent=1, ensure_ascii=False).encode())
        return index


def tokenizer_info(tokenizer, tokenizer_dir: str | Path, langs: set[str]) -> dict:
    """The index's record of the tokenizer; DataError if a language has no `<lang>` tag in it."""
    from swcm.tokenization import lang_tag, tokenizer_fingerprint

    vocab = tokenizer.get_vocab()
    missing = sorted(lang for lang in langs if lang_tag(lang) not in vocab)
    if missing:
        raise DataError(f"{tokenizer_dir}: tokenizer has no language tag for {', '.join(map(lang_tag, missing))}; "
                        f"use the model's tokenizer (convert_checkpoint.py from-encoder adds the tags)")
    return {"fingerprint": tokenizer_fingerprint(tokenizer), "path": str(tokenizer_dir), "vocab_size": len(tokenizer),
            "lang_tags": {lang: vocab[lang_tag(lang)] for lang in sorted(langs)},
            "special_ids": {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
                            "pad": tokenizer.pad_token_id, "unk": tokenizer.unk_token_id,
                            "mask": tokenizer.mask_token_id}}


def _input_size(path: Path) -> int:
    """The size of an input file; DataError if it is missing, or a regular file that is empty (a pipe such as
    `<(zcat x.gz)` has no size to check before it is read)."""
    try:
        st = path.stat()
    except OSError:
        raise DataError(f"{path}: input file not found") from None
    if path.is_file() and st.st_size == 0:
        raise DataError(f"{path}: input file is empty")
    return st.st_size


def _load_tokenizer(tokenizer_dir: str | Path):
    """The tokenizer in `tokenizer_dir`; DataError if the directory is missing or holds no tokenizer."""
    from swcm.tokenization import load_tokenizer

    if not Path(tokenizer_dir).is_dir():
        raise DataError(f"--tokenizer {tokenizer_dir}: directory not found (expected the model's tokenizer)")
    try:
        return load_tokenizer(tokenizer_dir)
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"--tokenizer {tokenizer_dir}: cannot load a tokenizer from it ({e})") from None


def _check_out(out_dir: Path, overwrite: bool) -> None:
    """DataError unless `out_dir` can receive a shard set: absent, an empty directory, or (with `overwrite`)
    a non-empty one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir}: is a file, expected a directory for the shard set")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(f"{out_dir}: not empty; pass --overwrite to replace the shard set there")


@contextlib.contextmanager
def _replacing(out_dir: Path) -> Iterator[Path]:
    """Yield a new empty directory beside `out_dir` to build in. If the block completes, the new directory
    takes `out_dir`'s place (a previous `out_dir` is renamed away first and deleted last). If anything raises
    (KeyboardInterrupt included, wherever it lands), there is no partial result: the new directory and the
    parent directories created here are removed, and `out_dir` is the previous one -- or the new one, if the
    swap had completed."""
    created = []
    parent = out_dir.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    stage, old = out_dir.with_name(f".{out_dir.name}.tmp-{tag}"), out_dir.with_name(f".{out_dir.name}.old-{tag}")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage.mkdir()
        yield stage
        if out_dir.exists():
            out_dir.rename(old)
        stage.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if old.exists():
            if out_dir.exists():   # swapped: only the deletion of the previous set was cut short
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.rename(out_dir)
        shutil.rmtree(stage, ignore_errors=True)
        for d in created:   # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def prepare(tokenizer_dir: str | Path, out_dir: str | Path, *, mono: list[tuple[str, str]] = (),
            parallel: list[tuple[str, str, str, str]] = (), parallel_jsonl: list[str] = (), max_len: int = 256,
            samples_per_shard: int = 2_000, overwrite: bool = False, args: list[str] | None = None,
            show_progress: bool = True) -> dict:
    """Build a shard set in `out_dir` and return its index.

    `mono`: (lang, file) pairs; `parallel`: (src_lang, tgt_lang, src_file, tgt_file); `parallel_jsonl`: files.
    Raises DataError for an unusable input (missing or empty file, no usable line, misaligned pair, missing
    language tag, a JSONL field that is not a string), an unusable tokenizer directory, an `out_dir` that is a
    file, or one that already holds a shard set (unless `overwrite`). Files, tokenizer, language tags and JSONL
    records are checked before any shard is written; whatever fails, `out_dir` is left as it was.
    """
    from tqdm import tqdm

    if not (mono or parallel or parallel_jsonl):
        raise DataError("no inputs: give at least one --mono, --parallel or --parallel-jsonl")
    if samples_per_shard < 1:
        raise DataError(f"--samples-per-shard {samples_per_shard}: must be at least 1")
    # The same target file may serve several pairs (zh beside bo, kk, ...); the same input twice may not.
    inputs = [Path(f) for _, f in mono] + [Path(p) for q in parallel for p in q[2:]] + [Path(f) for f in parallel_jsonl]
    keys = [str(f) for _, f in mono] + [f"{q[2]},{q[3]}" for q in parallel] + list(parallel_jsonl)
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise DataError(f"input given more than once: {', '.join(dupes)} (its samples would be duplicated)")
    total_bytes = sum(_input_size(p) for p in inputs)
    out_dir = Path(out_dir)
    _check_out(out_dir, overwrite)
    tokenizer = _load_tokenizer(tokenizer_dir)
    jsonl = [read_jsonl(Path(f)) for f in parallel_jsonl]
    langs = ({lang for lang, _ in mono} | {x for q in parallel for x in q[:2]}
             | {x for j in jsonl for pair in j.by_pair for x in pair})
    info = tokenizer_info(tokenizer, tokenizer_dir, langs)   # a missing language tag fails before any work

    with _replacing(out_dir) as stage, \
            tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", disable=not show_progress) as bar:
        prep = Preparer(tokenizer, stage, max_len, samples_per_shard, progress=bar)
        for lang, f in mono:
            prep.add_mono(lang, Path(f))
        for src_lang, tgt_lang, src_f, tgt_f in parallel:
            prep.add_parallel(src_lang, tgt_lang, Path(src_f), Path(tgt_f))
        for j in jsonl:
            prep.add_parallel_jsonl(j)
        index = prep.finish(info, args, max_len)
    log.info("wrote %d shards, %d samples, %d tokens to %s", len(index["shards"]), index["totals"]["all"]["samples"],
             index["totals"]["all"]["tokens"], out_dir)
    return index
