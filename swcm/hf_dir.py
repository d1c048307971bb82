"""What kind of model a Hugging Face directory holds, read from its config.json alone (no weights, no remote code).

An SWCM directory's config.json says model_type "xlm-roberta" (SWCMConfig.model_type gives the reason), so the
model type cannot tell it from the XLM-R encoder it was built from; the `auto_map` entry that names SWCMConfig can.
"""

from __future__ import annotations

import json
from pathlib import Path

SWCM = "swcm"
XLMR = "xlm-roberta"
SWCM_CONFIG_CLASS = "modeling_swcm.SWCMConfig"   # auto_map["AutoConfig"] of every SWCM directory


def config_kind(fields) -> str | None:
    """"swcm" for the config.json fields of an SWCM model (auto_map's AutoConfig is SWCMConfig, with or without a
    Hub repo prefix; or model_type "swcm", as exports before model_type became "xlm-roberta" say); otherwise the
    config's model_type ("xlm-roberta", "encoder-decoder", ...), or None when it has none."""
    if not isinstance(fields, dict):
        return None
    model_type, auto_map = fields.get("model_type"), fields.get("auto_map")
    auto_config = auto_map.get("AutoConfig") if isinstance(auto_map, dict) else None
    if model_type == SWCM or (isinstance(auto_config, str) and auto_config.split("--")[-1] == SWCM_CONFIG_CLASS):
        return SWCM
    return model_type if isinstance(model_type, str) else None


def not_an_encoder(fields) -> str | None:
    """Why config.json fields are not those of a plain XLM-R encoder (an SWCM model, another model type), or None
    when they are."""
    kind = config_kind(fields)
    if kind == XLMR:
        return None
    if kind == SWCM:
        return "an SWCM model, not an XLM-R encoder"
    return f"model_type is {kind!r}, expected {XLMR!r}"


def dir_kind(path: str | Path) -> str | None:
    """`config_kind` of the config.json in directory `path`; None when there is none or it is not a JSON object."""
    try:
        return config_kind(json.loads((Path(path) / "config.json").read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
