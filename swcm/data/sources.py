"""Where prepare's records come from: input paths resolved to files, and each file read as a stream of records.

A PATH given to prepare is a file, a glob, a directory of files, or a directory written by `datasets`'
`save_to_disk`. A file's format comes from its name: `.jsonl` / `.json` / `.ndjson` is JSON Lines, `.parquet` is
Parquet, anything else is plain text with one record per line; `.gz`, `.zst`, `.bz2` and `.xz` are decompressed on
the fly. Every reader streams: memory holds one line, one JSON record or one Parquet batch, never a file.

A record is `(file, line, value)`: `line` is the 1-based line (text, JSONL) or row (Parquet, datasets) in that
file, `value` the raw bytes of a text line or the decoded JSON / column value. Records of an input are numbered
1, 2, ... across its files in sorted order; that number, not the file name, identifies a sample, so the same corpus
in any format gives the same samples. Unreadable data (a corrupt .gz, a Parquet file without the column, a JSONL
record without the field) is a DataError naming the file and line.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import lzma
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator

from swcm.data import text as T
from swcm.data.shards import DataError

COMPRESSED = (".gz", ".zst", ".bz2", ".xz")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIX = ".parquet"
DATASETS_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")   # what save_to_disk writes
BATCH_ROWS = 1024   # Parquet / datasets rows per batch: small beside a shard, large enough to amortise Arrow calls
PAIR_FIELDS = ("src", "tgt", "src_lang", "tgt_lang")


@dataclass(frozen=True)
class Source:
    """One file (or a saved `datasets` directory) of an input, with the format it is read as."""
    path: str
    kind: str          # "text" | "jsonl" | "parquet" | "datasets"
    compression: str   # "" or one of COMPRESSED


def _kind(path: str) -> tuple[str, str]:
    name = path.lower()
    compression = next((c for c in COMPRESSED if name.endswith(c)), "")
    stem = name[: len(name) - len(compression)] if compression else name
    if stem.endswith(PARQUET_SUFFIX):
        if compression:
            raise DataError(f"{path}: a compressed Parquet file; Parquet compresses inside the file, give it "
                            f"uncompressed")
        return "parquet", ""
    if stem.endswith(JSONL_SUFFIXES):
        return "jsonl", compression
    return "text", compression


def _is_datasets_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in DATASETS_MARKERS)


def resolve(spec: str) -> list[Source]:
    """The files a PATH names, in sorted order: the file itself, the matches of a glob, the visible files of a
    directory, or one `datasets` directory. DataError if nothing is found, or a file found is empty."""
    spec = str(spec)
    path = Path(spec)
    if _is_datasets_dir(path):
        return [Source(spec, "datasets", "")]
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{spec}: directory holds no input file")
    elif any(c in spec for c in "*?["):
        files = sorted(f for f in glob.glob(spec) if Path(f).is_file())
        if not files:
            raise DataError(f"{spec}: no input file matches this pattern")
    else:
        try:
            st = path.stat()
        except OSError:
            raise DataError(f"{spec}: input file not found") from None
        if path.is_file() and st.st_size == 0:
            raise DataError(f"{spec}: input file is empty")
        files = [spec]
    sources = []
    for f in files:
        if f != spec and os.path.getsize(f) == 0:
            raise DataError(f"{f}: input file is empty")
        sources.append(Source(f, *_kind(f)))
    return sources


def _open_binary(src: Source):
    if src.compression == ".gz":
        return gzip.open(src.path, "rb")
    if src.compression == ".bz2":
        return bz2.open(src.path, "rb")
    if src.compression == ".xz":
        return lzma.open(src.path, "rb")
    if src.compression == ".zst":
        return io.BufferedReader(_ZstdFrames(src.path), buffer_size=1 << 20)
    return open(src.path, "rb")


class _ZstdFrames(io.RawIOBase):
    """A .zst file decompressed as a stream, frame after frame (as `zstd -d` reads concatenated frames), that raises
    ZstdError when the data ends inside a frame: zstandard's own stream_reader then just ends early, and a
    truncated download would pass for a shorter corpus."""

    def __init__(self, path: str):
        import zstandard

        self._zstd = zstandard
        self._file = open(path, "rb")
        self._dec = None
        self._buf, self._pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos == len(self._buf):
            chunk = self._file.read(1 << 20)
            if not chunk:
                if self._dec is not None and not self._dec.eof:
                    raise self._zstd.ZstdError("the data ends inside a frame (truncated file)")
                return 0
            out = []
            while chunk:
                if self._dec is None or self._dec.eof:
                    self._dec = self._zstd.ZstdDecompressor().decompressobj()
                out.append(self._dec.decompress(chunk))
                chunk = self._dec.unused_data if self._dec.eof else b""
            self._buf, self._pos = b"".join(out), 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _decompression_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


def raw_lines(src: Source) -> Generator[tuple[int, bytes], None, int]:
    """(line number, line without its newline) of a text or JSONL file, streamed; returns the number of lines. A
    UTF-8 byte-order mark at the start is dropped, and a final newline does not start an extra line. DataError
    naming the file and the last good line if it cannot be read or decompressed."""
    lineno = 0
    try:
        with _open_binary(src) as f:
            for lineno, line in enumerate(f, start=1):
                if lineno == 1 and line.startswith(T.BOM):
                    line = line[len(T.BOM):]
                yield lineno, line[:-1] if line.endswith(b"\n") else line
    except _decompression_errors() as e:
        raise DataError(f"{src.path}: corrupt {src.compression.lstrip('.')} data after line {lineno} "
                        f"({type(e).__name__}: {e})") from None
    except OSError as e:   # bz2 reports corrupt data as OSError; a vanished or unreadable file too
        raise DataError(f"{src.path}: cannot read input after line {lineno} ({e.strerror or e})") from None
    return lineno


def _optional(module: str, package: str, src: Source):
    """An optional reader's module; DataError naming the input and the package to install when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{src.path}: reading {src.kind} input needs the {package} package "
                        f"(pip install {package})") from None


def _columns(src: Source, fields: tuple[str, ...]) -> Generator[tuple[int, dict[str, Any]], None, int]:
    """(row number, {field: value}) of a Parquet file or a saved dataset, one Arrow batch in memory at a time;
    returns the number of rows."""
    if src.kind == "parquet":
        pq = _optional("pyarrow.parquet", "pyarrow", src)
        try:
            pf = pq.ParquetFile(src.path)
        except Exception as e:   # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
            raise DataError(f"{src.path}: not a readable Parquet file ({e})") from None
        names = pf.schema_arrow.names
        batches = (b.to_pydict() for b in pf.iter_batches(batch_size=BATCH_ROWS, columns=list(fields)))
    else:
        datasets = _optional("datasets", "datasets", src)
        try:
            ds = datasets.load_from_disk(src.path)
        except Exception as e:   # datasets raises FileNotFoundError / ValueError for a damaged directory
            raise DataError(f"{src.path}: not a readable saved dataset ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            raise DataError(f"{src.path}: a dataset with splits {sorted(ds)}; give the split's directory "
                            f"({src.path}/{sorted(ds)[0]})")
        names = ds.column_names
        batches = ds.select_columns(list(fields)).iter(batch_size=BATCH_ROWS) if set(fields) <= set(names) else ()
    missing = [f for f in fields if f not in names]
    if missing:
        raise DataError(f"{src.path}: no column {missing[0]!r} (columns: {', '.join(names)}); choose the text "
                        f"column with --text-field")
    row = 0
    for batch in batches:
        for values in zip(*(batch[f] for f in fields)):
            row += 1
            yield row, dict(zip(fields, values))
    return row


def _field_error(src: Source, line: int, field: str, value: Any) -> DataError:
    return DataError(f"{src.path}:{line}: field {field!r} is {json.dumps(value, ensure_ascii=False)[:40]}, "
                     f"expected a string")


def text_records(src: Source, field: str, owned) -> Generator[tuple[int, bytes | str | None, str | None], None, int]:
    """(line, text, skip reason) of each record of a monolingual source that `owned(line)` accepts, returning the
    number of records; other records are only counted past (a text line is never decoded, a JSON line never
    parsed). Text lines come as raw bytes for `text.clean_line`; JSONL / Parquet / datasets values as str. A JSONL line that is not a JSON
    object is a skip (`invalid_json`); a record without `field`, or with a value that is not a string, is a
    DataError naming the file and line."""
    if src.kind == "text":
        lines = _counted(raw_lines(src), owned)
        for line, raw in lines:
            yield line, raw, None
        return lines.count
    if src.kind == "jsonl":
        lines = _counted(raw_lines(src), owned)
        for line, raw in lines:
            rec, reason = _json_record(raw)
            if reason:
                yield line, None, reason
                continue
            if field not in rec:
                raise DataError(f"{src.path}:{line}: record has no field {field!r} (fields: "
                                f"{', '.join(list(rec)[:8])}); choose the text field with --text-field")
            if not isinstance(rec[field], str):
                raise _field_error(src, line, field, rec[field])
            yield line, rec[field], None
        return lines.count
    rows = _counted(_columns(src, (field,)), owned)
    for row, rec in rows:
        if not isinstance(rec[field], str):
            raise _field_error(src, row, field, rec[field])
        yield row, rec[field], None
    return rows.count


class _counted:
    """The items of a (number, value) generator whose number `owned` accepts; `count` is the generator's return
    value (how many items it had in all) once it is exhausted."""

    def __init__(self, gen, owned):
        self.gen, self.owned, self.count = gen, owned, 0

    def __iter__(self):
        while True:
            try:
                n, v = next(self.gen)
            except StopIteration as stop:
                self.count = stop.value or 0
                return
            if self.owned(n):
                yield n, v


def _json_record(raw: bytes) -> tuple[dict | None, str | None]:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, T.INVALID_UTF8
    except json.JSONDecodeError:
        return None, T.EMPTY if not raw.strip() else T.INVALID_JSON
    return (rec, None) if isinstance(rec, dict) else (None, T.INVALID_JSON)


def pair_records(src: Source, owned) -> Generator[tuple[int, dict | None, str | None], None, int]:
    """(line, {"src", "tgt", "src_lang", "tgt_lang"}, skip reason) of each record of a parallel JSONL, Parquet or
    datasets source that `owned(line)` accepts, returning the number of records. A JSONL line that is not an object
    with all four fields is a skip (`invalid_json`, as a line that is not JSON); a field that is present but not a string is a DataError naming
    the file and line (it would otherwise be trained on as the text of that value)."""
    if src.kind == "text":
        raise DataError(f"{src.path}: parallel records must be JSONL or Parquet with fields "
                        f"{', '.join(PAIR_FIELDS)} (aligned plain-text files go to --parallel)")
    items = _counted(raw_lines(src) if src.kind == "jsonl" else _columns(src, PAIR_FIELDS), owned)
    for line, value in items:
        rec, reason = _json_record(value) if src.kind == "jsonl" else (value, None)
        if reason is None and not all(k in rec for k in PAIR_FIELDS):
            reason = T.INVALID_JSON
        if reason:
            yield line, None, reason
            continue
        for k in PAIR_FIELDS:
            if not isinstance(rec[k], str):
                raise _field_error(src, line, k, rec[k])
        yield line, rec, None
    return items.count
