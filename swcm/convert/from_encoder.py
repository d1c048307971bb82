"""XLM-R / CINO encoder directory -> initialised XLM-SWCM Hugging Face directory.

The encoder weights are renamed through an explicit key map (`from_hf`, data rather than string edits), loaded
strictly (every encoder parameter must come from the checkpoint, nothing may be left over), the language-tag
rows are appended as the mean of the existing embedding rows, and the decoder is initialised per
`decoder_init` by the model itself (`SWCMForConditionalGeneration.init_decoder_from_encoder`). The result is
written to a temporary directory beside `out_dir` and renamed into place only when complete.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path

import torch

from swcm.convert import ConversionError
from swcm.convert.model_card import DEFAULT_LICENSE, check_license, front_matter, usage_sections
from swcm.convert.staging import staged_directory
from swcm.hf_dir import not_an_encoder
from swcm.modeling_swcm import SWCMConfig, SWCMForConditionalGeneration
from swcm.output_guard import check_output_dir, check_writable
from swcm.tokenization import DEFAULT_LANG_CODES, add_language_tags, lang_tag

log = logging.getLogger(__name__)

# XLM-R parameter (without the `roberta.` prefix of a *ForMaskedLM checkpoint) -> SWCM parameter.
# `{}` stands for the layer index. The names are identical below the `encoder.` prefix by design.
_LAYER = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
          "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")
FROM_HF: dict[str, str] = {
    **{f"embeddings.{m}.weight": f"encoder.embeddings.{m}.weight"
       for m in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm")},
    "embeddings.LayerNorm.bias": "encoder.embeddings.LayerNorm.bias",
    **{f"encoder.layer.{{}}.{m}.{p}": f"encoder.encoder.layer.{{}}.{m}.{p}" for m in _LAYER for p in ("weight", "bias")},
}
# Present in XLM-R checkpoints, deliberately not carried over:
SKIPPED_PREFIXES = (
    "pooler.",                    # the [CLS] classifier pooler: not part of a seq2seq model
    "lm_head.",                   # the masked-LM head (dense + LayerNorm + decoder): NOT our LM head
    "embeddings.position_ids",    # buffers stored by older transformers versions; recomputed
    "embeddings.token_type_ids",
)
WORD_EMBEDDINGS = "encoder.embeddings.word_embeddings.weight"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def from_hf(hf_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an XLM-R state dict (`XLMRobertaModel`, or `XLMRobertaForMaskedLM` with `roberta.` prefixes) to
    SWCM encoder keys; skip SKIPPED_PREFIXES; raise ConversionError on any key the map does not know."""
    out, unknown = {}, []
    for key, tensor in hf_state_dict.items():
        name = key.removeprefix("roberta.")
        if name.startswith(SKIPPED_PREFIXES):
            continue
        layer = re.search(r"\.(\d+)\.", name)
        pattern = name.replace(layer.group(0), ".{}.", 1) if layer else name
        if pattern not in FROM_HF:
            unknown.append(key)
            continue
        out[FROM_HF[pattern].format(layer.group(1)) if layer else FROM_HF[pattern]] = tensor
    if unknown:
        raise ConversionError(f"{len(unknown)} checkpoint keys are not XLM-R encoder parameters, e.g. {unknown[:3]}")
    return out


def read_encoder_config(encoder_dir: Path) -> dict:
    """config.json of an XLM-R directory as a dict; ConversionError unless it is one."""
    path = encoder_dir / "config.json"
    if not path.is_file():
        raise ConversionError(f"{path} not found (expected a Hugging Face XLM-R / CINO directory)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path} is not valid JSON ({e})") from None
    problem = not_an_encoder(config)
    if problem:
        raise ConversionError(f"{path}: {problem} (from-encoder takes an XLM-R / CINO encoder)")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"{path}: position_embedding_type is {config['position_embedding_type']!r}, "
                              f"expected 'absolute'")
    return config


def load_encoder_state_dict(encoder_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of an HF directory: model.safetensors, a sharded safetensors index, or pytorch_model.bin
    (read with weights_only=True, which refuses arbitrary pickled objects)."""
    from safetensors.torch import load_file

    path = next((encoder_dir / f for f in WEIGHT_FILES if (encoder_dir / f).is_file()), None)
    if path is None:
        raise ConversionError(f"no weights in {encoder_dir} (expected one of {', '.join(WEIGHT_FILES)})")
    try:
        if path.name == "model.safetensors":
            return load_file(str(path))
        if path.name == "model.safetensors.index.json":
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(str(encoder_dir / shard)).items()}
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file fails in many ways; say which file, on one line
        raise ConversionError(f"cannot read {path}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from None


def _load_tokenizer(encoder_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(encoder_dir))
    except Exception as e:  # transformers raises OSError, ValueError, ... for a missing or broken tokenizer
        raise ConversionError(f"cannot load the tokenizer of {encoder_dir}: {' '.join(str(e).split())}") from None


def _model_card(config: SWCMConfig, encoder_dir: Path, n_params: int, out_name: str, license: str) -> str:
    """README.md of an initialised directory: metadata block, what was built, the seq2seq convention, a runnable
    fine-tuning snippet (loading the model as `out_name`) and the licence note."""
    tags = ", ".join(f"`{lang_tag(c)}`={i}" for c, i in config.lang_token_ids.items())
    return f"""{front_matter(config.lang_codes, license)}
# XLM-SWCM (initialised, not yet pretrained)

Converted by `launch/convert_checkpoint.py from-encoder` from the encoder `{encoder_dir.name}`. Load with
`AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=True)`.

- decoder: {config.decoder_layers} layers `{config.layer_pattern}` (C = custom, N = normal), normal layer every
  {config.normal_layer_every}, decoder_init `{config.decoder_init}`
- LM head: {"tied to" if config.tie_word_embeddings else "separate from"} the word embedding, with bias
- parameters: {n_params:,}
- language tags: {tags}

{usage_sections(out_name, license)}"""


def convert_from_encoder(encoder_dir: str | Path, out_dir: str | Path, *, normal_layer_every: int = 3,
                         decoder_init: str = "encoder", tie_word_embeddings: bool = True,
                         lang_codes=DEFAULT_LANG_CODES, overwrite: bool = False, seed: int = 0,
                         dtype: str = "float32", license: str = DEFAULT_LICENSE, trim_corpus=None,
                         trim_min_count: int = 1) -> Path:
    """Build an initialised SWCM directory at `out_dir` from the XLM-R directory `encoder_dir`; return out_dir.

    Writes config.json (with auto_map), model.safetensors, generation_config.json, modeling_swcm.py, the
    tokenizer with the language tags, and README.md (its metadata gives `license`, a Hub licence id). With
    `trim_corpus` (text files / shard directories) the result is then trimmed to the vocabulary they use
    (swcm.convert.trim_vocab, `trim_min_count`), so only the trimmed directory is written. Raises
    ConversionError, writing nothing, on bad input, and OutputError (nothing touched) for an `out_dir` that
    overlaps the encoder, is not empty without `overwrite`, is not ours, or cannot be written.
    """
    encoder_dir, out_dir = Path(encoder_dir), Path(out_dir)
    if not encoder_dir.is_dir():
        raise ConversionError(f"encoder directory {encoder_dir} not found")
    check_output_dir(out_dir, [encoder_dir, *(trim_corpus or [])], overwrite=overwrite)
    check_writable(out_dir)
    if trim_corpus:
        from swcm.convert.trim_vocab import trim_vocab

        missing = [str(c) for c in trim_corpus if not Path(c).exists()]
        if missing:   # before the conversion, not after it
            raise ConversionError(f"--trim-vocab {missing[0]}: not found (expected a text file or a shard directory)")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.untrimmed-", dir=out_dir.parent) as tmp:
            # named as `out_dir`: the model card's snippets load the directory by that name
            untrimmed = convert_from_encoder(encoder_dir, Path(tmp) / out_dir.name,
                                             normal_layer_every=normal_layer_every,
                                             decoder_init=decoder_init, tie_word_embeddings=tie_word_embeddings,
                                             lang_codes=lang_codes, seed=seed, dtype=dtype, license=license)
            trim_vocab(untrimmed, trim_corpus, out_dir, min_count=trim_min_count, overwrite=overwrite)
        return out_dir
    if dtype not in ("float32", "bfloat16"):
        raise ConversionError(f"--dtype {dtype!r}: expected float32 or bfloat16")
    check_license(license)
    encoder_config = read_encoder_config(encoder_dir)
    state = from_hf(load_encoder_state_dict(encoder_dir))
    if WORD_EMBEDDINGS not in state:
        raise ConversionError(f"the weights in {encoder_dir} have no word embedding (embeddings.word_embeddings.weight)")
    tokenizer = _load_tokenizer(encoder_dir)
    rows = state[WORD_EMBEDDINGS].shape[0]
    if len(tokenizer) != rows:
        raise ConversionError(f"the tokenizer in {encoder_dir} has {len(tokenizer)} tokens but the word embedding "
                              f"has {rows} rows; they must match")
    if encoder_config.get("vocab_size") != rows:
        raise ConversionError(f"{encoder_dir / 'config.json'}: vocab_size is {encoder_config.get('vocab_size')} "
                              f"but the word embedding has {rows} rows")
    log.info("encoder %s: %d layers, hidden %d, vocab %d, %d tensors", encoder_dir,
             encoder_config["num_hidden_layers"], encoder_config["hidden_size"], rows, len(state))

    tag_ids = add_language_tags(tokenizer, lang_codes)
    n_new = len(tokenizer) - rows
    # New tag rows start at the mean of the existing rows: a neutral point of the embedding space.
    embedding = state[WORD_EMBEDDINGS]
    state[WORD_EMBEDDINGS] = torch.cat([embedding, embedding.float().mean(0).to(embedding.dtype).expand(n_new, -1)])
    log.info("language tags %s (%d new embedding rows = mean of the %d existing rows)", tag_ids, n_new, rows)

    try:
        config = SWCMConfig.from_encoder_config(
            encoder_config, normal_layer_every=normal_layer_every, decoder_init=decoder_init,
            tie_word_embeddings=tie_word_embeddings, lang_codes=lang_codes, lang_token_ids=tag_ids,
            vocab_size=len(tokenizer))
    except ValueError as e:
        raise ConversionError(f"invalid model settings: {e}") from None
    torch.manual_seed(seed)  # decides the random parts: normal layers (decoder_init=encoder), untied head
    model = SWCMForConditionalGeneration(config).eval()
    log.info("decoder %s (%d layers), decoder_init=%s, LM head %s", config.layer_pattern, config.decoder_layers,
             decoder_init, "tied" if tie_word_embeddings else "untied")

    expected = {k for k in model.state_dict() if k.startswith("encoder.")}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ConversionError(f"encoder weights do not match the config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches between config.json and the weights
        raise ConversionError(f"encoder weights do not match {encoder_dir / 'config.json'}: "
                              f"{' '.join(str(e).split())[:300]}") from None
    copied = model.init_decoder_from_encoder()
    log.info("decoder: %d tensors copied (%s)", len(copied), decoder_init)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    # The paper's pretraining length; transformers' default of 20 new tokens would cut summaries short. As
    # max_new_tokens, not max_length: a generate(max_new_tokens=...) then overrides it without a warning.
    model.generation_config.max_new_tokens = 256

    with staged_directory(out_dir) as staging:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        n_params = sum(p.numel() for p in model.parameters())
        (staging / "README.md").write_text(_model_card(config, encoder_dir, n_params, out_dir.name, license))
    log.info("wrote %s (%s parameters, %s)", out_dir, f"{n_params:,}", dtype)
    return out_dir
