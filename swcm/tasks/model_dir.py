"""An exported SWCM directory: checking it (without loading any weights) and loading it for generation."""

from __future__ import annotations

import json
from pathlib import Path

from swcm.hf_dir import SWCM, SWCM_CONFIG_CLASS, config_kind


class ModelDirError(ValueError):
    """A directory that is not a usable SWCM model; the message names the directory or file."""


def lang_codes(model_dir: str | Path) -> list[str]:
    """The language codes of the SWCM directory `model_dir`, from its config.json. Raises ModelDirError for a
    missing directory or config, or the config of a model that is not SWCM (swcm/hf_dir.py)."""
    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: model directory not found")
    try:
        fields = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelDirError(f"{config}: not found (not an SWCM model directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{config}: cannot read the model config ({e})") from None
    if config_kind(fields) != SWCM:
        found = fields.get("model_type") if isinstance(fields, dict) else None
        raise ModelDirError(f"{config}: not an SWCM model directory (model_type is {found!r} and auto_map names "
                            f"no {SWCM_CONFIG_CLASS})")
    codes = fields.get("lang_codes")
    if not isinstance(codes, list) or not codes or not all(isinstance(c, str) for c in codes):
        raise ModelDirError(f"{config}: lang_codes must be a non-empty list of language codes")
    return codes


def load(model_dir: str | Path, device: str):
    """The tokenizer and the model (eval mode, on `device`) of the SWCM directory `model_dir`. Raises
    ModelDirError when transformers cannot load it (missing or corrupt weights, say)."""
    from transformers import AutoModelForSeq2SeqLM

    from swcm.tokenization import load_tokenizer

    try:
        tokenizer = load_tokenizer(model_dir)
        model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir), trust_remote_code=True)
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{model_dir}: cannot load the model ({e})") from None
    # The length of a generation is set by max_new_tokens alone; an exported max_length would only make
    # transformers warn on every batch that max_new_tokens overrides it.
    model.generation_config.max_length = None
    return tokenizer, model.eval().to(device)
