"""Rewriting a tokenizer's files for a trimmed vocabulary: `tokenizer.json` (what transformers loads) and, where the
directory has one, the sentencepiece model (`sentencepiece.bpe.model`, what real XLM-R / CINO directories ship), so
that both give the new ids.

A kept id keeps its piece, its score and its relative order; new id i is old id `old_ids[i]`. Unigram segmentation
picks the best-scoring path over the pieces it has: a vocabulary that still holds every piece of the original best
path returns that path, so text the vocabulary was chosen from segments exactly as before. One more score matters:
the score of `<unk>` is the lowest piece score minus a fixed penalty (sentencepiece and tokenizers alike), so
`keep_ids` always keeps the lowest-scoring piece, and `<unk>` costs what it did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from swcm.convert import ConversionError

SPM_NAME = "sentencepiece.bpe.model"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


def read_tokenizer_json(model_dir: Path) -> dict:
    """The parsed tokenizer.json of `model_dir`; ConversionError unless it holds a Unigram model (XLM-R's kind)."""
    path = model_dir / TOKENIZER_JSON
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} not found (trim-vocab needs the fast tokenizer's tokenizer.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: cannot read ({e})") from None
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or model.get("type") != "Unigram" or not isinstance(model.get("vocab"), list):
        raise ConversionError(f"{path}: model.type is {model.get('type') if isinstance(model, dict) else None!r}, "
                              f"expected 'Unigram' (an XLM-R / CINO sentencepiece tokenizer)")
    if model.get("byte_fallback"):
        raise ConversionError(f"{path}: model.byte_fallback is true; trimming such a vocabulary is not supported")
    return spec


def protected_ids(spec: dict) -> set[int]:
    """Ids trimming never drops: every added token (`<s> <pad> </s> <unk> <mask>`, the language tags, any other
    added special token), the unknown piece, and the lowest-scoring piece (it fixes the score of `<unk>`)."""
    vocab = spec["model"]["vocab"]
    keep = {t["id"] for t in spec.get("added_tokens", [])}
    if spec["model"].get("unk_id") is not None:
        keep.add(spec["model"]["unk_id"])
    keep.add(min(range(len(vocab)), key=lambda i: vocab[i][1]))
    return keep


def single_character_ids(spec: dict) -> set[int]:
    """Ids of the pieces that are one character (after the word-start mark `▁`): with them kept, any text the
    original vocabulary covered still tokenises without `<unk>`, only into smaller pieces."""
    return {i for i, (piece, _score) in enumerate(spec["model"]["vocab"]) if len(piece.removeprefix("▁")) <= 1}


def trimmed_tokenizer_json(spec: dict, old_ids: Sequence[int]) -> dict:
    """`spec` (a parsed tokenizer.json) with only the ids `old_ids` (ascending, every added token among them), every id
    renumbered: the vocabulary, `unk_id`, added tokens and the post-processor's special-token ids."""
    new_of = {old: new for new, old in enumerate(old_ids)}

    def new_id(old: int, where: str) -> int:
        if old not in new_of:
            raise ConversionError(f"{TOKENIZER_JSON}: {where} uses id {old}, which the trimmed vocabulary drops")
        return new_of[old]

    out = json.loads(json.dumps(spec))   # a deep copy: the caller's spec stays the original
    model = out["model"]
    vocab = spec["model"]["vocab"]   # added tokens past its end (language tags) get ids after it, as before
    model["vocab"] = [vocab[i] for i in old_ids if i < len(vocab)]
    if model.get("unk_id") is not None:
        model["unk_id"] = new_id(model["unk_id"], "model.unk_id")
    for token in out.get("added_tokens", []):
        token["id"] = new_id(token["id"], f"added token {token['content']!r}")
    post = out.get("post_processor")
    processors = post.get("processors", [post]) if isinstance(post, dict) else []
    for proc in processors:
        for name, special in (proc.get("special_tokens") or {}).items():
            special["ids"] = [new_id(i, f"post_processor special token {name!r}") for i in special["ids"]]
        for field in ("sep", "cls"):   # RobertaProcessing / BertProcessing: [token, id]
            if isinstance(proc.get(field), list):
                proc[field][1] = new_id(proc[field][1], f"post_processor.{field}")
    return out


def trimmed_tokenizer_config(config: dict, old_ids: Sequence[int]) -> dict:
    """tokenizer_config.json with its `added_tokens_decoder` (id -> token, written by some transformers versions)
    renumbered; the other fields hold no ids."""
    new_of = {old: new for new, old in enumerate(old_ids)}
    out = dict(config)
    if isinstance(config.get("added_tokens_decoder"), dict):
        out["added_tokens_decoder"] = {str(new_of[int(k)]): v for k, v in config["added_tokens_decoder"].items()
                                       if int(k) in new_of}
    return out


def trimmed_sentencepiece_model(blob: bytes, spec: dict, old_ids: Sequence[int], path: Path) -> bytes:
    """The serialised sentencepiece ModelProto `blob` with only the pieces whose tokenizer.json id is in `old_ids`
    (its control and unknown pieces always stay), checked to keep the tokenizer's id layout: the tokenizer id of a
    sentencepiece piece minus its sentencepiece id is the same before and after (XLM-R: 1 for every normal piece).
    ConversionError, naming `path`, for a model that does not parse or does not line up with tokenizer.json."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(blob)
    except Exception as e:  # protobuf's DecodeError, or a message that is not a sentencepiece model
        raise ConversionError(f"{path}: not a sentencepiece model ({type(e).__name__}: {e})") from None
    normal = pb.ModelProto.SentencePiece.NORMAL
    hf_id = {piece: i for i, (piece, _score) in enumerate(spec["model"]["vocab"])}
    old_offsets = {hf_id[p.piece] - i for i, p in enumerate(proto.pieces) if p.type == normal and p.piece in hf_id}
    missing = [p.piece for p in proto.pieces if p.type == normal and p.piece not in hf_id]
    if missing or len(old_offsets) != 1:
        raise ConversionError(f"{path} does not line up with {TOKENIZER_JSON} (pieces missing there: {missing[:3]}, "
                              f"id offsets {sorted(old_offsets)[:3]}); trim-vocab cannot rewrite both consistently")
    kept = set(old_ids)
    pieces = [p for p in proto.pieces if p.type != normal or hf_id[p.piece] in kept]
    del proto.pieces[:]
    proto.pieces.extend(pieces)
    new_of = {old: new for new, old in enumerate(old_ids)}
    new_offsets = {new_of[hf_id[p.piece]] - i for i, p in enumerate(proto.pieces) if p.type == normal}
    if new_offsets != old_offsets:
        raise ConversionError(f"{path}: trimming would move sentencepiece ids against {TOKENIZER_JSON} (offsets "
                              f"{sorted(old_offsets)} -> {sorted(new_offsets)[:3]}); its control pieces are not first")
    return proto.SerializeToString()
