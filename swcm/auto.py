"""Make the `Auto*` classes of transformers know SWCM in processes that import swcm.

Exported directories carry `modeling_swcm.py` and an `auto_map`, so elsewhere they load with
`trust_remote_code=True`. Inside swcm's own tools the local classes are registered instead, so that loading
a tokenizer or config from an SWCM directory neither prompts for remote code nor imports a second copy.
"""

from __future__ import annotations

from pathlib import Path


def register_auto_classes() -> None:
    """Register SWCMConfig / SWCMForConditionalGeneration with AutoConfig / AutoModelForSeq2SeqLM (idempotent)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from swcm.modeling_swcm import SWCMConfig, SWCMForConditionalGeneration

    AutoConfig.register("swcm", SWCMConfig, exist_ok=True)
    AutoModelForSeq2SeqLM.register(SWCMConfig, SWCMForConditionalGeneration, exist_ok=True)


def load_tokenizer(path: str | Path):
    """The tokenizer of an SWCM (or XLM-R) directory, without a remote-code prompt."""
    from transformers import AutoTokenizer

    register_auto_classes()
    return AutoTokenizer.from_pretrained(str(path))
