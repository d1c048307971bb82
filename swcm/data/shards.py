"""The shard set on disk: `index.json`, `lengths.npz` and webdataset tar shards; reading and validating them.

Format (written by `swcm.data.prepare`, described in docs/data.md): one tar shard holds samples of a single
stream (`mono/<lang>` or `parallel/<src>-<tgt>`). A sample is three or four tar members sharing a key:
`<key>.meta.json` ({"id", "task", "lang" | "src_lang"+"tgt_lang"}), and `<key>.ids.i32` (mono) or
`<key>.src.i32` + `<key>.tgt.i32` (parallel): token ids without special tokens, little-endian int32.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from webdataset import tariterators

INDEX_NAME = "index.json"
LENGTHS_NAME = "lengths.npz"
FORMAT = "swcm-shards"
FORMAT_VERSION = 1


class DataError(ValueError):
    """A data input or shard set that cannot be used; the message names the file/field and what was expected."""


def load_index(shard_dir: str | Path) -> dict:
    """Read and structurally validate `shard_dir/index.json`; raise DataError naming the file and field."""
    path = Path(shard_dir) / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: shard index not found (run launch/prepare_data.py --out {shard_dir})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the shard index ({e})") from None
    if index.get("format") != FORMAT or index.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: expected format {FORMAT!r} version {FORMAT_VERSION}, "
                        f"got {index.get('format')!r} version {index.get('version')!r}")
    for field in ("tokenizer", "streams", "shards", "lengths", "totals"):
        if field not in index:
            raise DataError(f"{path}: field {field!r} missing")
    for name, info in index["shards"].items():
        for field in ("stream", "samples", "tokens", "bytes", "sha256"):
            if field not in info:
                raise DataError(f"{path}: shards.{name}.{field} missing")
        if info["stream"] not in index["streams"]:
            raise DataError(f"{path}: shards.{name}.stream {info['stream']!r} is not in streams")
    if not index["shards"]:
        raise DataError(f"{path}: the shard set holds no shards")
    return index


def check_fingerprint(index: dict, tokenizer, index_path: str | Path) -> None:
    """Raise DataError unless the shards were tokenised by a tokenizer with the same fingerprint as `tokenizer`,
    and every language of the shard set has its tag (with the same id) in `tokenizer`."""
    from swcm.tokenization import lang_tag, tokenizer_fingerprint, trimmed_from

    have = tokenizer_fingerprint(tokenizer)
    want = index["tokenizer"]["fingerprint"]
    if have != want:
        if trimmed_from(getattr(tokenizer, "name_or_path", None)) == want:
            raise DataError(f"{index_path}: the shards were made with the untrimmed tokenizer (fingerprint {want}) "
                            f"of this trimmed model (fingerprint {have}); re-run launch/prepare_data.py with "
                            f"--tokenizer {tokenizer.name_or_path}")
        if trimmed_from(index["tokenizer"].get("path")) == have:
            raise DataError(f"{index_path}: the shards were made with a trimmed tokenizer "
                            f"({index['tokenizer']['path']}, fingerprint {want}) but the model is untrimmed (fingerprint "
                            f"{have}); use the trimmed model or re-run launch/prepare_data.py with the model's tokenizer "
                            f"directory")
        raise DataError(f"{index_path}: the shards were tokenised with tokenizer fingerprint {want}, but the "
                        f"model's tokenizer has fingerprint {have}; re-run launch/prepare_data.py with the "
                        f"model's tokenizer directory")
    vocab = tokenizer.get_vocab()
    for code, tag_id in index["tokenizer"]["lang_tags"].items():
        if vocab.get(lang_tag(code)) != tag_id:
            raise DataError(f"{index_path}: tokenizer.lang_tags.{code} is {tag_id}, but the tokenizer maps "
                            f"{lang_tag(code)} to {vocab.get(lang_tag(code))}")


def shard_url(shard_dir: str | Path, name: str, url_prefix: str = "") -> str:
    """Where shard `name` is read from: `url_prefix + name` (an http(s) URL, `pipe:` command or path prefix) if
    a prefix is configured, else the file beside index.json."""
    return f"{url_prefix}{name}" if url_prefix else str(Path(shard_dir) / name)


def check_shards(shard_dir: str | Path, tokenizer, *, url_prefix: str = "", verify_hashes: bool = False) -> dict:
    """Validate a shard set before training: index.json well-formed, tokenizer fingerprint and language tags
    match `tokenizer`, lengths.npz present with its recorded sha256, and every local shard file present with
    its recorded size (and sha256 if `verify_hashes`). Remote shards (`url_prefix`) are checked when opened.

    Returns the index; raises DataError naming the offending file or field.
    """
    shard_dir = Path(shard_dir)
    index = load_index(shard_dir)
    check_fingerprint(index, tokenizer, shard_dir / INDEX_NAME)
    load_lengths(shard_dir, index)
    if not url_prefix:
        for name, info in index["shards"].items():
            path = shard_dir / name
            if not path.is_file():
                raise DataError(f"{path}: shard listed in {shard_dir / INDEX_NAME} is missing")
            size = path.stat().st_size
            if size != info["bytes"]:
                raise DataError(f"{path}: shard is {size} bytes, index.json records {info['bytes']} "
                                f"(truncated or rewritten)")
            if verify_hashes:
                digest = sha256_file(path)
                if digest != info["sha256"]:
                    raise DataError(f"{path}: sha256 {digest} differs from index.json's {info['sha256']}")
    return index


def load_lengths(shard_dir: str | Path, index: dict) -> dict[str, np.ndarray]:
    """Per-shard content lengths: name -> int32 array (n,) for mono shards, (n, 2) [src, tgt] for parallel.

    Checked against the sha256 in index.json and the per-shard sample counts.
    """
    path = Path(shard_dir) / index["lengths"]["file"]
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the per-sample lengths ({e})") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != index["lengths"]["sha256"]:
        raise DataError(f"{path}: sha256 {digest} differs from index.json's lengths.sha256 "
                        f"{index['lengths']['sha256']}")
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        lengths = {name: npz[Path(name).stem] for name in index["shards"]}
    for name, info in index["shards"].items():
        if len(lengths[name]) != info["samples"]:
            raise DataError(f"{path}: {len(lengths[name])} lengths for shard {name}, index.json says "
                            f"{info['samples']} samples")
    return lengths


def sample_source(index: dict, sample_id: str) -> list[tuple[str, int]]:
    """Where the sample with meta id `sample_id` ("INPUT:RECORD" or "INPUT:RECORD:PIECE", INPUT the position of
    the input in `index["inputs"]`, RECORD counted from 1 across that input's files) came from: [(file, line)],
    or [(source file, line), (target file, line)] for a pair of aligned files. DataError if the index has no
    such record."""
    k, record = (int(x) for x in sample_id.split(":")[:2])
    if not 0 <= k < len(index["inputs"]):
        raise DataError(f"sample id {sample_id!r}: the index has no input {k}")
    inp = index["inputs"][k]
    if inp["kind"] == "aligned":
        return [(f, record) for f in inp["files"]]
    left = record
    for f in inp["files"]:
        if left <= inp["records"][f]:
            return [(f, left)]
        left -= inp["records"][f]
    raise DataError(f"sample id {sample_id!r}: input {k} has {inp['lines']} records")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_shard(url: str, *, expect_sha256: str | None = None, expect_samples: int | None = None) -> list[dict]:
    """Read a whole shard (local path, http(s) URL or `pipe:` command, through webdataset) into memory.

    Returns its samples in order, each {"meta": dict, "ids": array} (mono) or {"meta", "src", "tgt"}
    (parallel), arrays int32. The bytes are checked against `expect_sha256` and the sample count against
    `expect_samples` before use; a mismatch or a tar error is a DataError naming the shard.
    """
    try:
        with wds.gopen(url, "rb") as stream:
            blob = stream.read()
    except Exception as e:  # gopen raises OSError, subprocess and HTTP errors alike
        raise DataError(f"shard {url}: cannot open ({e})") from None
    if expect_sha256 is not None:
        digest = hashlib.sha256(blob).hexdigest()
        if digest != expect_sha256:
            raise DataError(f"shard {url}: sha256 {digest} differs from index.json's {expect_sha256} "
                            f"({len(blob)} bytes read; truncated or corrupt)")
    try:
        files = ({**f, "__url__": url} for f in tariterators.tar_file_iterator(io.BytesIO(blob)))
        samples = [_decode_sample(s) for s in tariterators.group_by_keys(files)]
    except Exception as e:  # tarfile.ReadError, EOFError, KeyError from a malformed member set
        raise DataError(f"shard {url}: not a readable webdataset tar ({type(e).__name__}: {e})") from None
    if expect_samples is not None and len(samples) != expect_samples:
        raise DataError(f"shard {url}: {len(samples)} samples, index.json records {expect_samples}")
    return samples


def _decode_sample(raw: dict[str, Any]) -> dict:
    meta = json.loads(raw["meta.json"])
    if "ids.i32" in raw:
        return {"meta": meta, "ids": np.frombuffer(raw["ids.i32"], dtype="<i4")}
    return {"meta": meta, "src": np.frombuffer(raw["src.i32"], dtype="<i4"),
            "tgt": np.frombuffer(raw["tgt.i32"], dtype="<i4")}
