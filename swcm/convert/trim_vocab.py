"""Vocabulary trimming (`launch/convert_checkpoint.py trim-vocab`): keep the pieces a corpus uses, drop the rest.

Works on any Hugging Face directory of this project's model kinds (an XLM-R / CINO encoder, an initialised SWCM
directory, a `to-hf` export) as files, without building the model: the corpus is tokenised with the directory's own
tokenizer and its piece counts decide the kept ids (`choose_ids`); the vocabulary-sized tensors (word embedding,
tied or untied LM head, output bias) keep those rows; every token id in config.json / generation_config.json
(special ids, language tags, a forced target language) is renumbered; tokenizer.json and the sentencepiece model
are rewritten (swcm.convert.trim_tokenizer); `trim_map.json` records the old id of every new id. Everything else in
the directory (modeling file, model card, ...) is copied. The result is written beside `--out` and renamed into
place when complete (swcm.convert.staging).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from swcm.convert import ConversionError
from swcm.convert.from_encoder import WEIGHT_FILES, load_encoder_state_dict
from swcm.convert.staging import staged_directory
from swcm.convert.trim_tokenizer import (SPM_NAME, TOKENIZER_CONFIG, TOKENIZER_JSON, protected_ids,
                                         read_tokenizer_json, single_character_ids, trimmed_sentencepiece_model,
                                         trimmed_tokenizer_config, trimmed_tokenizer_json)
from swcm.output_guard import OutputError, check_output_dir, mark_ours
from swcm.tokenization import TRIM_MAP_NAME, load_tokenizer, tokenizer_fingerprint

log = logging.getLogger(__name__)

# Tensors with one row per vocabulary id, by the end of their name: XLM-R (`roberta.embeddings.word_embeddings`,
# the masked-LM head's `lm_head.decoder` + `lm_head.bias`) and SWCM (`encoder.embeddings.word_embeddings`,
# `lm_head.weight` when untied, `lm_head.bias`).
VOCAB_ROW_SUFFIXES = ("embeddings.word_embeddings.weight", "lm_head.weight", "lm_head.bias", "lm_head.decoder.weight",
                      "lm_head.decoder.bias")
CONFIG_FILES = ("config.json", "generation_config.json")
LINES_PER_CALL = 1024   # lines per batch-tokenizer call, as prepare_data: amortises the call, bounds the memory
MODEL_CARD = "README.md"


def count_pieces(tokenizer, corpus: Sequence[str | Path], vocab_size: int) -> np.ndarray:
    """How often each id occurs in the tokenisation of `corpus` (int64, length `vocab_size`).

    A corpus entry is a shard directory (holding index.json, from launch/prepare_data.py: its ids are counted as
    stored, after checking that it was made with this tokenizer) or a text file (one document per line, decoded,
    NFC-normalised and tokenised without special tokens exactly as prepare_data does; lines it would skip are
    skipped). ConversionError names a missing or unusable entry."""
    from swcm.data.shards import INDEX_NAME, DataError, check_shards, read_shard, shard_url
    from swcm.data.text import clean_line

    counts = np.zeros(vocab_size, dtype=np.int64)

    def add(ids_batch: Iterable) -> None:
        ids = [np.asarray(a, dtype=np.int64) for a in ids_batch]
        if ids:
            counts[:] += np.bincount(np.concatenate(ids), minlength=vocab_size)[:vocab_size]

    for entry in map(Path, corpus):
        if entry.is_dir():
            try:
                index = check_shards(entry, tokenizer)
                for name, info in index["shards"].items():
                    samples = read_shard(shard_url(entry, name), expect_sha256=info["sha256"])
                    add(a for s in samples for a in (s.get("ids"), s.get("src"), s.get("tgt")) if a is not None)
            except DataError as e:
                raise ConversionError(f"--corpus {entry}: {e}") from None
            continue
        if not entry.is_file():
            raise ConversionError(f"--corpus {entry}: not found (expected a text file or a shard directory with "
                                  f"{INDEX_NAME})")
        with open(entry, "rb") as f:
            batch: list[str] = []
            for raw in f:
                text, _reason = clean_line(raw.rstrip(b"\n"))
                if text is not None:
                    batch.append(text)
                if len(batch) == LINES_PER_CALL:
                    add(tokenizer(batch, add_special_tokens=False, split_special_tokens=True)["input_ids"])
                    batch = []
            if batch:
                add(tokenizer(batch, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    return counts


def choose_ids(counts: np.ndarray, spec: dict, min_count: int = 1, keep_characters: bool = False) -> list[int]:
    """The old ids to keep, ascending: the protected ids of tokenizer.json `spec` (special tokens, language tags,
    the lowest-scoring piece), every id counted at least `min_count` (>= 1) times, and (with `keep_characters`)
    every one-character piece."""
    keep = protected_ids(spec) | set(np.flatnonzero(counts >= min_count).tolist())
    if keep_characters:
        keep |= single_character_ids(spec)
    return sorted(keep)


def _renumber_config(fields: dict, new_of: dict[int, int], path: Path, vocab_size: int) -> dict:
    """config.json / generation_config.json fields with every token id renumbered (`*_token_id` ints and lists,
    SWCM's `lang_token_ids`) and `vocab_size` set; ConversionError if one of those ids is dropped."""
    def new_id(old, field):
        if old is None:
            return None
        if old not in new_of:
            raise ConversionError(f"{path}: {field} is {old}, an id the trimmed vocabulary drops")
        return new_of[old]

    out = dict(fields)
    for field, value in fields.items():
        if field.endswith("_token_id") and isinstance(value, int):
            out[field] = new_id(value, field)
        elif field.endswith("_token_id") and isinstance(value, list):
            out[field] = [new_id(v, field) for v in value]
    if isinstance(fields.get("lang_token_ids"), dict):
        out["lang_token_ids"] = {c: new_id(i, f"lang_token_ids.{c}") for c, i in fields["lang_token_ids"].items()}
    if "vocab_size" in fields:
        out["vocab_size"] = vocab_size
    return out


def _read_json(path: Path) -> dict:
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: cannot read ({e})") from None
    if not isinstance(fields, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return fields


def trimmed_state_dict(state: dict, old_ids: Sequence[int], vocab_size: int, model_dir: Path) -> dict:
    """`state` with the rows `old_ids` of every vocabulary-sized tensor (VOCAB_ROW_SUFFIXES), the others as they are;
    ConversionError if a vocabulary tensor does not have `vocab_size` rows or there is no word embedding."""
    import torch

    index = torch.tensor(list(old_ids), dtype=torch.long)
    out, selected = {}, []
    for key, tensor in state.items():
        if key.endswith(VOCAB_ROW_SUFFIXES):
            if tensor.shape[0] != vocab_size:
                raise ConversionError(f"{model_dir}: {key} has {tensor.shape[0]} rows, config.json's vocab_size is "
                                      f"{vocab_size}")
            out[key] = tensor.index_select(0, index).contiguous()
            selected.append(key)
        else:
            out[key] = tensor
    if not any(k.endswith("word_embeddings.weight") for k in selected):
        raise ConversionError(f"{model_dir}: the weights have no word embedding (*embeddings.word_embeddings.weight)")
    log.info("vocabulary rows selected in %s", ", ".join(selected))
    return out


def _card_note(card: str, old_size: int, old_ids: Sequence[int], fields: dict) -> str:
    tags = fields.get("lang_token_ids") or {}
    tag_text = (", language tags " + ", ".join(f"`<{c}>`={i}" for c, i in tags.items())) if tags else ""
    return (f"{card.rstrip()}\n\n## Trimmed vocabulary\n\nThe vocabulary was trimmed by `convert_checkpoint.py "
            f"trim-vocab` from {old_size:,} to {len(old_ids):,} ids{tag_text}; token ids named above this section are "
            f"those of the untrimmed vocabulary. `{TRIM_MAP_NAME}` gives the old id of every new id.\n")


def trim_vocab(model_dir: str | Path, corpus: Sequence[str | Path], out_dir: str | Path, *, min_count: int = 1,
               keep_characters: bool = False, overwrite: bool = False) -> dict:
    """Write to `out_dir` a copy of the HF directory `model_dir` whose vocabulary holds only the ids `choose_ids`
    keeps for `corpus` (see `count_pieces`), with the same model kind, the rows of the kept ids, renumbered configs,
    rewritten tokenizer files and `trim_map.json` ({"old_ids": [old id of new id 0, ...], ...}). Returns that map.
    Raises ConversionError, writing nothing, on bad input."""
    model_dir, out_dir, corpus = Path(model_dir), Path(out_dir), [Path(c) for c in corpus]
    if not model_dir.is_dir():
        raise ConversionError(f"--model {model_dir}: directory not found")
    if not corpus:
        raise ConversionError("--corpus: give at least one text file or shard directory")
    if min_count < 1:
        raise ConversionError(f"--min-count {min_count}: must be at least 1")
    try:
        check_output_dir(out_dir, [model_dir, *corpus], overwrite=overwrite)
    except OutputError as e:
        raise ConversionError(str(e)) from None
    config = _read_json(model_dir / "config.json")
    vocab_size = config.get("vocab_size")
    spec = read_tokenizer_json(model_dir)
    try:
        tokenizer = load_tokenizer(model_dir)
    except (OSError, ValueError, TypeError) as e:
        raise ConversionError(f"cannot load the tokenizer of {model_dir}: {' '.join(str(e).split())}") from None
    if len(tokenizer) != vocab_size:
        raise ConversionError(f"{model_dir / TOKENIZER_JSON}: {len(tokenizer)} ids, config.json's vocab_size is "
                              f"{vocab_size}; they must match")

    counts = count_pieces(tokenizer, corpus, vocab_size)
    if not counts.any():
        raise ConversionError(f"--corpus {' '.join(map(str, corpus))}: no usable text (every line empty or skipped)")
    old_ids = choose_ids(counts, spec, min_count, keep_characters)
    new_of = {old: new for new, old in enumerate(old_ids)}
    used = int((counts > 0).sum())
    log.info("corpus uses %d of %d ids; keeping %d (min count %d%s)", used, vocab_size, len(old_ids), min_count,
             ", every one-character piece" if keep_characters else "")
    state = trimmed_state_dict(load_encoder_state_dict(model_dir), old_ids, vocab_size, model_dir)

    new_spec = trimmed_tokenizer_json(spec, old_ids)
    trim_map = {"old_ids": old_ids, "old_vocab_size": vocab_size, "min_count": min_count,
                "keep_characters": keep_characters, "corpus": [str(c) for c in corpus],
                "source_fingerprint": tokenizer_fingerprint(tokenizer)}
    with staged_directory(out_dir) as staging:
        from safetensors.torch import save_file

        skip = {*WEIGHT_FILES, *CONFIG_FILES, TOKENIZER_JSON, TOKENIZER_CONFIG, SPM_NAME, TRIM_MAP_NAME, MODEL_CARD}
        if (model_dir / "model.safetensors.index.json").is_file():
            skip |= set(_read_json(model_dir / "model.safetensors.index.json")["weight_map"].values())
        for item in model_dir.iterdir():
            if item.name not in skip and item.is_file():
                shutil.copy2(item, staging / item.name)
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        for name in CONFIG_FILES:
            if (model_dir / name).is_file():
                fields = _renumber_config(_read_json(model_dir / name), new_of, model_dir / name, len(old_ids))
                (staging / name).write_text(json.dumps(fields, indent=2, ensure_ascii=False) + "\n")
        (staging / TOKENIZER_JSON).write_text(json.dumps(new_spec, ensure_ascii=False, indent=2), encoding="utf-8")
        if (model_dir / TOKENIZER_CONFIG).is_file():
            tok_config = trimmed_tokenizer_config(_read_json(model_dir / TOKENIZER_CONFIG), old_ids)
            (staging / TOKENIZER_CONFIG).write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
        if (model_dir / SPM_NAME).is_file():
            blob = trimmed_sentencepiece_model((model_dir / SPM_NAME).read_bytes(), spec, old_ids, model_dir / SPM_NAME)
            (staging / SPM_NAME).write_bytes(blob)
        if (model_dir / MODEL_CARD).is_file():
            card = (model_dir / MODEL_CARD).read_text(encoding="utf-8")
            note = _card_note(card, vocab_size, old_ids, _read_json(staging / "config.json"))
            (staging / MODEL_CARD).write_text(note, encoding="utf-8")
        trim_map["fingerprint"] = tokenizer_fingerprint(load_tokenizer(staging))
        (staging / TRIM_MAP_NAME).write_text(json.dumps(trim_map) + "\n")
        mark_ours(staging, "model")
    log.info("wrote %s: vocabulary %d -> %d ids (%.1f%%)", out_dir, vocab_size, len(old_ids),
             100 * len(old_ids) / vocab_size)
    return trim_map
