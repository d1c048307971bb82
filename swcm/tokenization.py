"""XLM-R tokenizers for swcm: building one from a sentencepiece model, language tags, fingerprints.

The XLM-R convention (kept so that real XLM-R / CINO checkpoints line up): ids are the sentencepiece ids
shifted by one, `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, and `<mask>` is the last id of the base vocabulary.
Language tags (`<bo>`, `<zh>`, ...) are added special tokens after `<mask>`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

DEFAULT_LANG_CODES = ("bo", "kk", "mn", "ug", "zh")
# Written by `convert_checkpoint.py trim-vocab` beside a trimmed tokenizer: {"old_ids": [...], "source_fingerprint", ...}
TRIM_MAP_NAME = "trim_map.json"


def lang_tag(code: str) -> str:
    """The special token that marks language `code`, e.g. `"bo"` -> `"<bo>"`."""
    return f"<{code}>"


def train_sentencepiece_tokenizer(files: Sequence[str | Path], out_dir: str | Path, vocab_size: int = 8000,
                                  max_sentences: int = 50_000, seed_sentences: bool = True,
                                  with_sentencepiece_model: bool = False):
    """Train a unigram sentencepiece model on `files` and save it as an XLM-R tokenizer in `out_dir`.

    Returns the loaded `XLMRobertaTokenizer`. `max_sentences` caps the lines sentencepiece samples
    (it shuffles the input, so every file contributes). `with_sentencepiece_model` also saves the model itself
    (`sentencepiece.bpe.model`, beside tokenizer.json, as real XLM-R / CINO directories have it).
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer

    files = [str(f) for f in files]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"tokenizer training text not found: {f}")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        # XLM-R's layout: spm reserves unk=0, bos=1, eos=2 and no pad; transformers then shifts every id by
        # one and puts <pad> at 1, which makes <s>=0 <pad>=1 </s>=2 <unk>=3 as in the real checkpoints.
        spm.SentencePieceTrainer.train(
            input=",".join(files), model_prefix=f"{tmp}/sentencepiece.bpe", vocab_size=vocab_size,
            model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            # 0.9995 keeps rare Tibetan stacks and CJK characters out of <unk> without bloating a tiny vocab.
            character_coverage=0.9995, input_sentence_size=max_sentences, shuffle_input_sentence=seed_sentences,
            num_threads=2, minloglevel=2)
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer"}))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent if out_dir.parent.exists() else None))
        tokenizer.save_pretrained(staging)
        if with_sentencepiece_model:
            shutil.copy(f"{tmp}/sentencepiece.bpe.model", staging / "sentencepiece.bpe.model")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return tokenizer


def load_tokenizer(path: str | Path):
    """The tokenizer saved in `path` (an XLM-R, SWCM or tokenizer-only directory).

    The tokenizer class comes from tokenizer_config.json; the model config is not consulted, so an SWCM
    directory (whose config names remote code) loads without a trust_remote_code prompt.
    """
    from transformers import AutoTokenizer, PreTrainedConfig

    return AutoTokenizer.from_pretrained(str(path), config=PreTrainedConfig())


def add_language_tags(tokenizer, codes: Iterable[str] = DEFAULT_LANG_CODES) -> dict[str, int]:
    """Add `<code>` special tokens (in the given order, skipping ones already present); return code -> id."""
    tags = [lang_tag(c) for c in codes]
    missing = [t for t in tags if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return {c: tokenizer.convert_tokens_to_ids(lang_tag(c)) for c in codes}


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of everything that decides the ids a tokenizer produces (vocabulary, added tokens,
    normalizer, pre-tokenizer, model), ignoring run-time padding/truncation settings."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    for volatile in ("truncation", "padding", "version"):
        spec.pop(volatile, None)
    blob = json.dumps(spec, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def trimmed_from(tokenizer_dir: str | Path | None) -> str | None:
    """The fingerprint of the tokenizer that the one in `tokenizer_dir` was trimmed from (its trim_map.json), or None
    when it was not trimmed or the map cannot be read."""
    if not tokenizer_dir:
        return None
    try:
        trim_map = json.loads((Path(tokenizer_dir) / TRIM_MAP_NAME).read_text(encoding="utf-8"))
        fingerprint = trim_map["source_fingerprint"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return fingerprint if isinstance(fingerprint, str) else None
