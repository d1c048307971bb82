"""Checkpoint conversion: `from_encoder` (XLM-R / CINO encoder -> initialised SWCM HF directory); the DeepSpeed
-> HF (`to-hf`) and universal-checkpoint conversions live beside it. Every converter reports bad input by
raising `ConversionError` with a one-line message naming the file or field and what was expected; the CLI
(launch/convert_checkpoint.py) prints it as `error: ...` and exits non-zero."""


class ConversionError(Exception):
    """Bad conversion input (missing/foreign checkpoint, mismatched tokenizer, occupied output, ...)."""
