"""A seq2seq model directory for evaluation: an SWCM export, or any Hugging Face `AutoModelForSeq2SeqLM` directory
(the warm start's EncoderDecoderModel, mBART, mT5, NLLB, ...). Checked from config.json without loading weights;
loaded with its tokenizer and the `swcm.tasks.layouts.Layout` that speaks its language convention. Remote code is
trusted for SWCM directories only (their modeling file is ours); anything else loads with transformers' own classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Collection

from swcm.hf_dir import SWCM, config_kind


class ModelDirError(ValueError):
    """A directory that is not a usable seq2seq model; the message names the directory or file."""


def _config(model_dir: Path) -> dict:
    config = model_dir / "config.json"
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: model directory not found")
    try:
        fields = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelDirError(f"{config}: not found (not a model directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{config}: cannot read the model config ({e})") from None
    if not isinstance(fields, dict):
        raise ModelDirError(f"{config}: expected a JSON object")
    return fields


def kind(model_dir: str | Path) -> str:
    """"swcm" for an SWCM directory, else the model_type of a model `AutoModelForSeq2SeqLM` loads ("encoder-decoder",
    "mbart", "mt5", "m2m_100", ...). Raises ModelDirError for a missing directory or config, or a model that is not
    sequence-to-sequence (an XLM-R encoder, a causal LM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    model_dir = Path(model_dir)
    fields = _config(model_dir)
    found = config_kind(fields)
    if found == SWCM or found in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return found
    raise ModelDirError(f"{model_dir / 'config.json'}: not a sequence-to-sequence model (model_type is {found!r}, "
                        "which AutoModelForSeq2SeqLM does not load; expected an SWCM export or a model such as "
                        "encoder-decoder, mbart, mt5, m2m_100)")


def lang_codes(model_dir: str | Path) -> list[str]:
    """The language codes of the SWCM directory `model_dir`, from its config.json. Raises ModelDirError for a
    missing directory or config, or a model that is not SWCM."""
    model_dir = Path(model_dir)
    fields = _config(model_dir)
    if config_kind(fields) != SWCM:
        raise ModelDirError(f"{model_dir / 'config.json'}: not an SWCM model directory (model_type is "
                            f"{fields.get('model_type')!r} and auto_map names no SWCM config)")
    codes = fields.get("lang_codes")
    if not isinstance(codes, list) or not codes or not all(isinstance(c, str) for c in codes):
        raise ModelDirError(f"{model_dir / 'config.json'}: lang_codes must be a non-empty list of language codes")
    return codes


def _decoder_start(model_dir: Path) -> int:
    """decoder_start_token_id from config.json, else generation_config.json (where some exports keep it)."""
    for name in ("config.json", "generation_config.json"):
        try:
            value = json.loads((model_dir / name).read_text(encoding="utf-8")).get("decoder_start_token_id")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            continue
        if isinstance(value, int):
            return value
    raise ModelDirError(f"{model_dir / 'config.json'}: no decoder_start_token_id (nor in generation_config.json)")


def load_layout(model_dir: str | Path, codes: Collection[str], lang_map: dict[str, str] | None = None):
    """The tokenizer of `model_dir` in the `Layout` that marks `codes` the way the model expects (SWCM: its tags,
    whatever `lang_map` says; otherwise `swcm.tasks.layouts.find_layout`). Raises ModelDirError when the tokenizer does not load, LayoutError
    when a code cannot be marked."""
    from swcm.tasks.layouts import find_layout, tags_layout
    from swcm.tokenization import load_tokenizer

    model_dir = Path(model_dir)
    try:
        tokenizer = load_tokenizer(model_dir)
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{model_dir}: cannot load the tokenizer ({e})") from None
    start = _decoder_start(model_dir)
    if kind(model_dir) == SWCM:
        return tags_layout(tokenizer, codes, start)
    return find_layout(tokenizer, start, codes, lang_map)


def load(model_dir: str | Path, device: str):
    """The model of `model_dir` (eval mode, on `device`). Raises ModelDirError when transformers cannot load it
    (missing or corrupt weights, say)."""
    from transformers import AutoModelForSeq2SeqLM

    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir), trust_remote_code=kind(model_dir) == SWCM)
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{model_dir}: cannot load the model ({e})") from None
    # The length of a generation is set by max_new_tokens alone; an exported max_length would only make
    # transformers warn on every batch that max_new_tokens overrides it.
    model.generation_config.max_length = None
    return model.eval().to(device)
