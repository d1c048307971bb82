"""XLM-SWCM: an XLM-R / CINO encoder with a decoder initialised from the encoder's own weights.

The whole model is in this one file (config, attention, layers, model) so that a reader can hold it in their
head, and so that an exported checkpoint loads with `trust_remote_code=True` where swcm is not installed: this
file imports only torch and transformers, and its siblings in an export (the batch layout and swcm's kernels, which
`save_pretrained` writes beside it). A kernel path that was asked for and cannot load is an error, never a silent
fallback; `attn_implementation='auto'` on CUDA without the kernels runs SDPA and says why once.

Architecture (Su et al., ACL 2025, "Multilingual Encoder Knows more than You Realize"; see DESIGN.md §2):

    encoder   XLM-R, post-LN. Parameter names are those of `transformers.XLMRobertaModel`, so an XLM-R or CINO
              state dict loads by name under the prefix `encoder.` (e.g. `encoder.encoder.layer.3.output.dense.weight`).
    decoder   `decoder.layers.{j}`, one CustomDecoderLayer per encoder layer, with a NormalDecoderLayer after every
              `normal_layer_every` custom layers (never after the last):  X=3, 12 layers -> CCCN CCCN CCCN CCC.
              Custom:  causal self-attn -> FFN1 -> cross-attn -> FFN2   (each: residual + LayerNorm, post-LN)
              Normal:  causal self-attn -> cross-attn -> FFN            (each: residual + LayerNorm, post-LN)
    embedding the decoder embeds with the encoder's embedding module itself (word, position, token type, LayerNorm).
    head      `lm_head`: logits = h·Eᵀ + b, b always present (zeros at init). E is the word embedding itself by default
              (`tie_word_embeddings=True`); untied, E is a separate matrix initialised normal(0, initializer_range),
              as the released code's separate head was.

State-dict keys: `encoder.*` (XLMRobertaModel names), `decoder.layers.{j}.*`, `lm_head.weight` (only when untied;
tied checkpoints store the embedding once and re-tie on load), `lm_head.bias`.

Batch layout (swcm/seq2seq_layout.py, which travels with this file): encoder `<s> <src_lang> x </s>`; labels
`<tgt_lang> y </s>` with the target-language tag as the first label token (scored, mBART-50's convention);
decoder inputs `<s> <tgt_lang> y`, the labels shifted right, derived here when only labels are given (so
`DataCollatorForSeq2Seq` and `Seq2SeqTrainer` work). Generation starts from `decoder_start_token_id` (= `<s>`);
to choose the target language, force the tag (`forced_bos_token_id`) or pass `decoder_input_ids = <s> <tgt_lang>`;
a model fine-tuned towards one language emits its tag unforced.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import math
import os
import shutil
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.utils import logging

from .seq2seq_layout import IGNORE_INDEX, decoder_mask_from_labels, shift_right

logger = logging.get_logger(__name__)

DECODER_INITS = ("encoder", "random", "duplicate")
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "triton")


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


class SWCMConfig(PreTrainedConfig):
    """Hyper-parameters of an XLM-SWCM model. The encoder fields are XLM-R's (same names and meaning); the rest
    describe the decoder, the head and the language tags. `decoder_layers` and `layer_pattern` are derived."""

    # The encoder is XLM-R's, and saying so is what lets `AutoTokenizer.from_pretrained(DIR)` load the stock XLM-R
    # tokenizer without asking about remote code: transformers 5 reads the model config first, and only a
    # model_type it knows keeps it from asking. The model itself still comes from this file through auto_map
    # (`trust_remote_code=True`); swcm tells its directories apart by that auto_map (swcm/hf_dir.py).
    model_type = "xlm-roberta"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    # Encoder (XLM-R base values as defaults).
    vocab_size: int = 250002
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    # Decoder. `normal_layer_every` = X of the paper (0: custom layers only, BASE-A); the released model uses 3.
    normal_layer_every: int = 3
    decoder_init: str = "encoder"
    # Derived from num_hidden_layers and normal_layer_every in __post_init__. It carries this name because
    # transformers' DynamicCache(config) sizes itself from `decoder_layers` on a flat encoder-decoder config.
    decoder_layers: int | None = None
    # Head and loss.
    tie_word_embeddings: bool = True
    label_smoothing: float = 0.0
    fused_lm_head_ce: bool = True
    # Language tags: codes in vocabulary order, and the ids of their `<code>` tokens (set by the converter).
    lang_codes: list[str] | None = None
    lang_token_ids: dict[str, int] | None = None
    # XLM-R special ids: <s>=0 <pad>=1 </s>=2. Generation starts from <s>, as the decoder does in training.
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 0
    is_encoder_decoder: bool = True
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        if self.decoder_init not in DECODER_INITS:
            raise ValueError(f"decoder_init must be one of {DECODER_INITS}, got {self.decoder_init!r}")
        if self.normal_layer_every < 0:
            raise ValueError(f"normal_layer_every must be >= 0, got {self.normal_layer_every}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.lang_codes is None:
            self.lang_codes = ["bo", "kk", "mn", "ug", "zh"]
        if self.lang_token_ids is None:
            self.lang_token_ids = {}
        depth = len(self.layer_pattern)
        if self.decoder_layers is not None and self.decoder_layers != depth:
            raise ValueError(f"decoder_layers={self.decoder_layers} contradicts num_hidden_layers="
                             f"{self.num_hidden_layers} with normal_layer_every={self.normal_layer_every} "
                             f"(which give {depth}); leave decoder_layers unset")
        self.decoder_layers = depth
        super().__post_init__(**kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        """transformers' save, plus `auto_map` and the files remote code needs (`write_remote_code`). Saving a model
        saves its config through this too."""
        self.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, **kwargs)
        write_remote_code(save_directory)

    @property
    def layer_pattern(self) -> str:
        """Decoder layer kinds in order, 'C' custom and 'N' normal, e.g. 'CCCNCCCNCCCNCCC' for 12 layers, X=3."""
        x, n = self.normal_layer_every, self.num_hidden_layers
        return "".join("C" + ("N" if x and (i + 1) % x == 0 and i + 1 < n else "") for i in range(n))

    @classmethod
    def from_encoder_config(cls, xlmr_config, *, normal_layer_every: int = 3, decoder_init: str = "encoder",
                            tie_word_embeddings: bool = True, lang_codes=("bo", "kk", "mn", "ug", "zh"),
                            lang_token_ids: dict[str, int] | None = None, vocab_size: int | None = None,
                            **kwargs) -> "SWCMConfig":
        """An SWCM config whose encoder is `xlmr_config` (an `XLMRobertaConfig` or its dict); `vocab_size`
        overrides the encoder's (pass the size after adding language tags); further SWCMConfig fields in
        `kwargs` take precedence over the encoder's values."""
        src = xlmr_config if isinstance(xlmr_config, dict) else xlmr_config.to_dict()
        encoder_fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                          "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
                          "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps",
                          "pad_token_id", "bos_token_id", "eos_token_id")
        fields = {k: src[k] for k in encoder_fields if src.get(k) is not None}
        fields.update(vocab_size=vocab_size if vocab_size is not None else src["vocab_size"],
                      normal_layer_every=normal_layer_every, decoder_init=decoder_init,
                      tie_word_embeddings=tie_word_embeddings, lang_codes=list(lang_codes),
                      lang_token_ids=dict(lang_token_ids or {}), decoder_start_token_id=fields.get("bos_token_id", 0))
        return cls(**{**fields, **kwargs})


# ----------------------------------------------------------------------------------------------------------------
# swcm's kernels (attention, fused LM head + loss): where they load from, and never a silent fallback
# ----------------------------------------------------------------------------------------------------------------

# An export carries the kernel files beside this one: transformers copies (and downloads from the Hub) the files a
# remote modeling file imports relatively, so `_kernel_beside_this_file` names them literally. An installed swcm
# has them under the import name `swcm_kernels` (never `kernels`: that is Hugging Face's package).
KERNEL_MODULES = ("attention", "lm_head_ce", "triton_support")


def _kernel_beside_this_file(name: str):
    if name == "attention":
        from .attention import flash_attention as entry
    else:
        from .lm_head_ce import fused_linear_cross_entropy as entry
    return sys.modules[entry.__module__]


@functools.cache
def _load_kernel(name: str):
    """(module, None) or (None, why it cannot be imported). Imported lazily and once, so that loading the model
    never imports triton unless a kernel path is used."""
    try:
        return _kernel_beside_this_file(name), None
    except ImportError as e:
        beside = e
    try:
        return importlib.import_module(f"swcm_kernels.{name}"), None
    except ImportError as e:
        return None, f"not beside the modeling file ({beside}) nor installed as swcm_kernels.{name} ({e})"


def kernel_module(name: str):
    """swcm's kernel module `name` ('attention' or 'lm_head_ce'); ImportError naming the cause when it cannot load."""
    module, why = _load_kernel(name)
    if module is None:
        raise ImportError(f"swcm's kernel module {name!r} cannot be imported: {why}")
    return module


def triton_attention_unavailable() -> str | None:
    """Why swcm's Triton attention cannot run on CUDA here (None when it can)."""
    module, why = _load_kernel("attention")
    if module is None:
        return why
    return "triton is not installed" if module.triton is None else None


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


def resolve_attn_implementation(impl: str, device) -> str:
    """The attention path `impl` takes for tensors on `device`: 'auto' is swcm's Triton flash attention on CUDA and
    SDPA elsewhere (on CUDA without the kernels: SDPA, with one warning naming the cause); any other name is itself."""
    if impl != "auto":
        return impl
    if torch.device(device).type != "cuda":
        return "sdpa"
    why = triton_attention_unavailable()
    if why is None:
        return "triton"
    _warn_once(f"attn_implementation 'auto' runs SDPA on CUDA: swcm's Triton attention is unavailable ({why})")
    return "sdpa"


def resolve_lm_head(config, device) -> str:
    """The LM head + loss path a training forward takes on `device`: 'fused-triton' / 'fused-torch' (chunked, never
    the N x V logits) or 'naive' (config.fused_lm_head_ce false). ImportError when the fused head cannot load."""
    if not config.fused_lm_head_ce:
        return "naive"
    return f"fused-{kernel_module('lm_head_ce').resolve_impl(torch.device(device))}"


def attention(q, k, v, *, key_padding_mask=None, causal=False, impl="sdpa", dropout_p=0.0, training=False):
    """Multi-head attention softmax(q·kᵀ/√d)·v for q (B,H,Tq,D), k/v (B,H,Tk,D) -> (B,H,Tq,D).

    key_padding_mask: (B,Tk) bool, True = attend (None: every key). causal: query i sees key j iff
    j <= i + (Tk - Tq), i.e. the queries are the last Tq of Tk positions (the rest came from the KV cache).
    impl: 'eager' (plain matmul/mask/softmax, the reference), 'sdpa', 'triton' (swcm's flash attention, dropout
    inside the kernel) or 'auto' (see `resolve_attn_implementation`).
    dropout_p is applied to the attention probabilities only when `training`.
    """
    tq, tk = q.shape[-2], k.shape[-2]
    dropout_p = dropout_p if training else 0.0
    impl = resolve_attn_implementation(impl, q.device)
    if impl == "triton":
        return kernel_module("attention").flash_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, dropout_p=dropout_p)

    mask = None  # bool, broadcastable to (B, H, Tq, Tk), True = attend
    if key_padding_mask is not None:
        mask = key_padding_mask[:, None, None, :]
    if causal and tq > 1:
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
        mask = allowed if mask is None else mask & allowed
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if impl == "eager":
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if mask is not None:
            # The dtype's minimum rather than -inf: a row with no visible key then averages instead of giving NaN.
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = F.dropout(torch.softmax(scores.float(), dim=-1).to(q.dtype), p=dropout_p)
        return torch.matmul(probs, v)
    raise ValueError(f"unknown attn_implementation {impl!r}; expected one of {ATTN_IMPLEMENTATIONS}")


def _swcm_only(*args, **kwargs):
    raise NotImplementedError("'triton' and 'auto' are swcm's own attention paths; only SWCM models can use them")


# transformers validates `attn_implementation` against its registry before the model sees it; registering the
# names makes `from_pretrained(..., attn_implementation="triton" / "auto")` legal. SWCM dispatches through
# `attention` above.
AttentionInterface.register("triton", _swcm_only)
AttentionInterface.register("auto", _swcm_only)


# ----------------------------------------------------------------------------------------------------------------
# The tied embedding's gradient: one V x H tensor, summed in place
# ----------------------------------------------------------------------------------------------------------------


class TiedEmbeddingGrad:
    """The gradient of the tied embedding E for one forward pass, summed in place into one V x H tensor.

    The head gives a dense V x H gradient; each lookup only the rows it read. Left to autograd, each lookup's
    part (sparse) is added to the head's out of place: a new V x H tensor per lookup, 0.4 GB at CINO's vocabulary,
    at the end of the backward where memory peaks. Here every contributor adds into the head's tensor instead,
    and the last to run hands the sum to autograd, so E receives exactly one gradient.
    """

    def __init__(self):
        self.pending = 0  # contributors registered by the forward whose backward has not run yet
        self.total = None  # the head's dense gradient, once it has arrived
        self.early_rows = []  # (ids, rows) of lookups that ran before it

    def register(self):
        self.pending += 1

    def add(self, dense=None, ids=None, rows=None):
        """Adds one contributor's part (dense, or rows at ids). Returns the sum when this was the last part
        registered, else None (autograd then gets the gradient from the last contributor only)."""
        if dense is not None:  # the head's backward made it for this node alone: ours to add into
            self.total = dense if self.total is None else self.total.add_(dense)
        else:
            self.early_rows.append((ids, rows))
        if self.total is not None:
            for i, r in self.early_rows:
                self.total.index_add_(0, i, r.to(self.total.dtype))
            self.early_rows.clear()
        self.pending -= 1
        if self.pending:
            return None
        if self.total is None:
            raise RuntimeError("tied embedding gradient: the lookups ran backward but the head did not")
        total, self.total = self.total, None
        return total


class _HeadWeight(torch.autograd.Function):
    """E as the head sees it: the identity forward; backward gives the head's gradient to a TiedEmbeddingGrad."""

    @staticmethod
    def forward(ctx, weight, tied_grad):
        tied_grad.register()
        ctx.tied_grad = tied_grad
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        return ctx.tied_grad.add(dense=grad), None


class _Lookup(torch.autograd.Function):
    """F.embedding whose backward gives the rows' gradient to a TiedEmbeddingGrad (pads get none, as in F.embedding)."""

    @staticmethod
    def forward(ctx, ids, weight, padding_idx, tied_grad):
        tied_grad.register()
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.tied_grad = padding_idx, tied_grad
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        ids, grad = ids.reshape(-1), grad.reshape(-1, grad.shape[-1])
        if ctx.padding_idx is not None:
            keep = ids.ne(ctx.padding_idx)
            ids, grad = ids[keep], grad[keep]
        return None, ctx.tied_grad.add(ids=ids, rows=grad), None, None


class WordEmbedding(nn.Embedding):
    """nn.Embedding whose lookups add their gradient into `tied_grad` when the model sets one (training a tied
    head with a loss), and behave as nn.Embedding otherwise."""

    tied_grad: TiedEmbeddingGrad | None = None

    def forward(self, input_ids: torch.LongTensor) -> torch.Tensor:
        if self.tied_grad is None:
            return super().forward(input_ids)
        return _Lookup.apply(input_ids, self.weight, self.padding_idx, self.tied_grad)


# ----------------------------------------------------------------------------------------------------------------
# Building blocks (module and parameter names follow transformers' XLM-R so that encoder weights load by name)
# ----------------------------------------------------------------------------------------------------------------


class Embeddings(nn.Module):
    """word + RoBERTa position + token-type(0) embeddings, LayerNorm, dropout. Shared by encoder and decoder."""

    def __init__(self, config: SWCMConfig):
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = WordEmbedding(config.vocab_size, config.hidden_size, padding_idx=self.padding_idx)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=self.padding_idx)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.LongTensor, past_length: int = 0) -> torch.Tensor:
        # RoBERTa positions: padding_idx + running count of non-pad tokens (pads keep padding_idx), continued
        # after the `past_length` tokens already in the KV cache.
        not_pad = input_ids.ne(self.padding_idx).long()
        position_ids = (torch.cumsum(not_pad, dim=1) + past_length) * not_pad + self.padding_idx
        token_type = self.token_type_embeddings.weight[0]  # XLM-R uses a single segment type
        h = self.word_embeddings(input_ids) + self.position_embeddings(position_ids) + token_type
        return self.dropout(self.LayerNorm(h))


class SelfProjections(nn.Module):
    """The Q, K, V projections (XLM-R's `attention.self`)."""

    def __init__(self, config: SWCMConfig):
        super().__init__()
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)


class AddNorm(nn.Module):
    """dense -> dropout -> + residual -> LayerNorm (XLM-R's `attention.output` and `output`: post-LN)."""

    def __init__(self, config: SWCMConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class Attention(nn.Module):
    """Multi-head attention sublayer with its residual + LayerNorm. Self-attention (optionally causal, with a
    KV cache) when `key_value_states` is None, cross-attention over `key_value_states` otherwise (K/V computed
    once per generation and kept in the cross-attention cache)."""

    def __init__(self, config: SWCMConfig, layer_idx: int | None = None):
        super().__init__()
        self.config = config  # read at call time: set_attn_implementation() changes config._attn_implementation
        self.layer_idx = layer_idx  # position in the decoder's KV cache; None in the encoder
        self.num_heads = config.num_attention_heads
        self.self = SelfProjections(config)
        self.output = AddNorm(config, config.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.num_heads, -1).transpose(1, 2)  # (B,T,C) -> (B,H,T,D)

    def forward(self, hidden, key_padding_mask=None, *, causal=False, key_value_states=None, past_key_values=None):
        q = self._heads(self.self.query(hidden))
        if key_value_states is None:
            k, v = self._heads(self.self.key(hidden)), self._heads(self.self.value(hidden))
            if past_key_values is not None:
                k, v = past_key_values.self_attention_cache.update(k, v, self.layer_idx)
        elif past_key_values is not None and past_key_values.is_updated.get(self.layer_idx):
            cached = past_key_values.cross_attention_cache.layers[self.layer_idx]
            k, v = cached.keys, cached.values
        else:
            k, v = self._heads(self.self.key(key_value_states)), self._heads(self.self.value(key_value_states))
            if past_key_values is not None:
                k, v = past_key_values.cross_attention_cache.update(k, v, self.layer_idx)
                past_key_values.is_updated[self.layer_idx] = True
        out = attention(q, k, v, key_padding_mask=key_padding_mask, causal=causal,
                        impl=self.config._attn_implementation, dropout_p=self.config.attention_probs_dropout_prob,
                        training=self.training)
        return self.output(out.transpose(1, 2).reshape(hidden.shape), hidden)


class Intermediate(nn.Module):
    """The FFN's expansion with its activation (XLM-R's `intermediate`)."""

    def __init__(self, config: SWCMConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(h))


class FeedForward(nn.Module):
    """A decoder FFN sublayer: `intermediate` and `output` exactly as in an XLM-R layer, so it copies by name."""

    def __init__(self, config: SWCMConfig):
        super().__init__()
        self.intermediate = Intermediate(config)
        self.output = AddNorm(config, config.intermediate_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(h), h)


class EncoderLayer(GradientCheckpointingLayer):
    """An XLM-R layer: self-attention, then FFN (`intermediate`, `output`), each post-LN."""

    def __init__(self, config: SWCMConfig):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = AddNorm(config, config.intermediate_size)

    def forward(self, hidden, key_padding_mask):
        hidden = self.attention(hidden, key_padding_mask)
        return self.output(self.intermediate(hidden), hidden)


class EncoderStack(nn.Module):
    """Holds the layers under `layer`, as XLM-R's `encoder` does (hence `encoder.encoder.layer.{i}` keys)."""

    def __init__(self, config: SWCMConfig):
        super().__init__()
        self.layer = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))


class SWCMEncoder(nn.Module):
    """The XLM-R encoder (embeddings + layers, no pooler). `generate()` calls it through `get_encoder()`."""

    main_input_name = "input_ids"

    def __init__(self, config: SWCMConfig):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = EncoderStack(config)

    def forward(self, input_ids, attention_mask=None, output_attentions=False, output_hidden_states=False,
                return_dict=True) -> BaseModelOutput:
        """Hidden states (B,T,C) for `input_ids` (B,T); attention_mask (B,T), 1 = token, 0 = padding (None: all
        tokens, as in XLMRobertaModel). Returns a BaseModelOutput (hidden_states too if asked)."""
        if output_attentions:
            raise ValueError("SWCM does not return attention weights (output_attentions=True)")
        keep = attention_mask.bool() if attention_mask is not None else None
        hidden = self.embeddings(input_ids)
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.encoder.layer:
            hidden = layer(hidden, keep)
            if output_hidden_states:
                all_hidden.append(hidden)
        out = BaseModelOutput(last_hidden_state=hidden, hidden_states=tuple(all_hidden) if all_hidden else None)
        return out if return_dict else out.to_tuple()


class CustomDecoderLayer(GradientCheckpointingLayer):
    """self-attn (causal) -> FFN1 -> cross-attn -> FFN2, each residual + LayerNorm. Every sublayer has the shape
    of a sublayer of encoder layer i, from which `decoder_init="encoder"` copies it."""

    def __init__(self, config: SWCMConfig, layer_idx: int):
        super().__init__()
        self.attention = Attention(config, layer_idx)
        self.ffn1 = FeedForward(config)
        self.crossattention = Attention(config, layer_idx)
        self.ffn2 = FeedForward(config)

    def forward(self, hidden, encoder_hidden, self_mask, cross_mask, past_key_values=None):
        hidden = self.ffn1(self.attention(hidden, self_mask, causal=True, past_key_values=past_key_values))
        hidden = self.crossattention(hidden, cross_mask, key_value_states=encoder_hidden,
                                     past_key_values=past_key_values)
        return self.ffn2(hidden)


class NormalDecoderLayer(GradientCheckpointingLayer):
    """A standard post-LN decoder layer: self-attn (causal) -> cross-attn -> FFN. Randomly initialised
    (`decoder_init="duplicate"` copies it from the custom layer before it instead)."""

    def __init__(self, config: SWCMConfig, layer_idx: int):
        super().__init__()
        self.attention = Attention(config, layer_idx)
        self.crossattention = Attention(config, layer_idx)
        self.ffn = FeedForward(config)

    def forward(self, hidden, encoder_hidden, self_mask, cross_mask, past_key_values=None):
        hidden = self.attention(hidden, self_mask, causal=True, past_key_values=past_key_values)
        hidden = self.crossattention(hidden, cross_mask, key_value_states=encoder_hidden,
                                     past_key_values=past_key_values)
        return self.ffn(hidden)


class SWCMDecoder(nn.Module):
    """The interleaved decoder layers (`config.layer_pattern`). Takes already embedded tokens: the embedding
    module belongs to the encoder and is used by both sides."""

    def __init__(self, config: SWCMConfig):
        super().__init__()
        kinds = {"C": CustomDecoderLayer, "N": NormalDecoderLayer}
        self.layers = nn.ModuleList(kinds[c](config, j) for j, c in enumerate(config.layer_pattern))

    def forward(self, hidden, encoder_hidden, self_mask, cross_mask, past_key_values=None,
                output_hidden_states=False):
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.layers:
            hidden = layer(hidden, encoder_hidden, self_mask, cross_mask, past_key_values=past_key_values)
            if output_hidden_states:
                all_hidden.append(hidden)
        return hidden, tuple(all_hidden) if all_hidden else None


class LMHead(nn.Linear):
    """logits = h·Wᵀ + b, with W the word embedding when tied. It also computes the loss, because with the fused
    kernel the loss needs W without materialising logits, and under ZeRO-3 DeepSpeed gathers a partitioned W
    only inside the forward of the module that owns it."""

    tied_grad: TiedEmbeddingGrad | None = None  # set by the model while a tied head trains with a loss

    def __init__(self, config: SWCMConfig):
        super().__init__(config.hidden_size, config.vocab_size, bias=True)
        self.config = config

    def forward(self, hidden, labels=None, num_items_in_batch=None):
        """Returns (logits, loss, token_losses). Without labels: (logits (B,T,V), None, None). With labels (B,T)
        (IGNORE_INDEX = not scored): loss = sum of the scored tokens' cross-entropy / `num_items_in_batch`
        (default: the number of scored tokens here, i.e. their mean; 0, with a graph, when there are none);
        token_losses (B,T) fp32, detached, 0 where not scored; logits None on the fused path."""
        if labels is None:
            return F.linear(hidden, self.weight, self.bias), None, None
        weight = self.weight if self.tied_grad is None else _HeadWeight.apply(self.weight, self.tied_grad)
        scored = labels.ne(IGNORE_INDEX)
        y = labels[scored]
        smoothing = self.config.label_smoothing
        fused = kernel_module("lm_head_ce").fused_linear_cross_entropy if self.config.fused_lm_head_ce else None
        logits = None
        if fused is not None and y.numel() > 0:
            # Only the scored rows go through the kernel: pads cost nothing. It returns their mean.
            mean, per_token = fused(hidden[scored], weight, y, bias=self.bias, ignore_index=IGNORE_INDEX,
                                    label_smoothing=smoothing, return_token_losses=True)
            total = mean * y.numel()
        else:
            logits = F.linear(hidden, weight, self.bias)
            per_token = F.cross_entropy(logits[scored].float(), y, reduction="none", label_smoothing=smoothing)
            total = per_token.sum()
        # Nothing to score gives 0 (still attached to the graph, so backward() works), not a NaN mean over nothing.
        loss = total / (num_items_in_batch if num_items_in_batch is not None else max(y.numel(), 1))
        token_losses = torch.zeros(labels.shape, dtype=torch.float32, device=hidden.device)
        token_losses[scored] = per_token.detach().float()
        return logits, loss, token_losses


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


# transformers 5.25 renamed the outputs' (and generate's) `past_key_values` to `cache`.
_CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"


@dataclass
class SWCMSeq2SeqLMOutput(Seq2SeqLMOutput):
    """Seq2SeqLMOutput plus `token_losses` (B,T): fp32 detached per-token loss, 0 where labels are IGNORE_INDEX (the
    trainer logs per-language loss from it). `logits` is None when the fused head+loss kernel ran."""

    token_losses: torch.FloatTensor | None = None


class SWCMForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """XLM-SWCM encoder-decoder with a language-model head.

    forward(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels, ...) — masks are 1 for
    tokens, 0 for padding; labels are aligned with decoder_input_ids and IGNORE_INDEX where not scored. Given
    labels alone, the decoder inputs and their mask are derived from them (seq2seq_layout.shift_right).
    """

    config_class = SWCMConfig
    base_model_prefix = "swcm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["EncoderLayer", "CustomDecoderLayer", "NormalDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    # Attention reads config._attn_implementation at call time, so set_attn_implementation() works; transformers'
    # source-code heuristic for that looks for its own AttentionInterface lookup and would refuse.
    _can_set_attn_implementation_cached_value = True
    # Applies only when config.tie_word_embeddings is true: the head's weight is the word embedding.
    _tied_weights_keys = {"lm_head.weight": "encoder.embeddings.word_embeddings.weight"}

    def __init__(self, config: SWCMConfig):
        super().__init__(config)
        self.encoder = SWCMEncoder(self.config)
        self.decoder = SWCMDecoder(self.config)
        self.lm_head = LMHead(self.config)
        self.post_init()

    # -- embeddings (needed by resize_token_embeddings and weight tying) --

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.encoder.embeddings.word_embeddings = value

    def get_output_embeddings(self) -> LMHead:
        return self.lm_head

    def set_output_embeddings(self, new: nn.Linear):
        """Adopt the parameters of `new` (e.g. the resized head from resize_token_embeddings) into our LMHead,
        which also owns the loss."""
        self.lm_head.weight, self.lm_head.bias = new.weight, new.bias
        self.lm_head.in_features, self.lm_head.out_features = new.in_features, new.out_features

    def get_encoder(self) -> SWCMEncoder:
        return self.encoder

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """decoder_input_ids for `labels`: `<s>` then the labels shifted right (what DataCollatorForSeq2Seq calls)."""
        return shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)

    # -- initialisation --

    def _init_weights(self, module):
        """Random init for what is not loaded: normal(0, initializer_range) matrices, zero biases (also the LM
        head's), LayerNorm 1/0. transformers.initialization skips tensors already loaded; `numel() > 0` skips
        parameters that ZeRO-3 has already partitioned away from this rank."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if module.weight.numel() > 0:
                init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None and module.bias.numel() > 0:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.weight.numel() > 0:
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm) and module.weight.numel() > 0:
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def decoder_init_map(self) -> dict[str, str]:
        """{decoder parameter: parameter it starts as a copy of}, per config.decoder_init, in copy order.

        encoder:   custom layer i <- encoder layer i: self- and cross-attention (Q, K, V, output dense and
                   LayerNorm) <- its attention; FFN1 and FFN2 (intermediate, output dense and LayerNorm) <- its
                   FFN. Normal layers stay random.
        duplicate: as `encoder`, and each normal layer <- the custom layer before it (self-attn <- self-attn,
                   cross-attn <- cross-attn, FFN <- FFN1), so consecutive layers start identical (BASE-B).
        random:    nothing is copied.
        """
        if self.config.decoder_init == "random":
            return {}
        attn = [f"{m}.{p}" for m in ("self.query", "self.key", "self.value", "output.dense", "output.LayerNorm")
                for p in ("weight", "bias")]
        ffn = [f"{m}.{p}" for m in ("intermediate.dense", "output.dense", "output.LayerNorm")
               for p in ("weight", "bias")]
        mapping, custom_i, last_custom = {}, 0, None
        for j, kind in enumerate(self.config.layer_pattern):
            dst = f"decoder.layers.{j}"
            if kind == "C":
                src = f"encoder.encoder.layer.{custom_i}"
                for name in attn:
                    mapping[f"{dst}.attention.{name}"] = f"{src}.attention.{name}"
                    mapping[f"{dst}.crossattention.{name}"] = f"{src}.attention.{name}"
                for name in ffn:
                    mapping[f"{dst}.ffn1.{name}"] = f"{src}.{name}"
                    mapping[f"{dst}.ffn2.{name}"] = f"{src}.{name}"
                custom_i, last_custom = custom_i + 1, dst
            elif self.config.decoder_init == "duplicate":
                for name in attn:
                    mapping[f"{dst}.attention.{name}"] = f"{last_custom}.attention.{name}"
                    mapping[f"{dst}.crossattention.{name}"] = f"{last_custom}.crossattention.{name}"
                for name in ffn:
                    mapping[f"{dst}.ffn.{name}"] = f"{last_custom}.ffn1.{name}"
        return mapping

    @torch.no_grad()
    def init_decoder_from_encoder(self) -> dict[str, str]:
        """Copy decoder weights per `decoder_init_map()` (call after the encoder weights are loaded). Copies are
        in place into the decoder's own parameters, so they train independently of their sources. Returns the map."""
        params = dict(self.named_parameters(remove_duplicate=False))
        mapping = self.decoder_init_map()
        for dst, src in mapping.items():
            params[dst].copy_(params[src])
        return mapping

    # -- forward --

    @contextlib.contextmanager
    def _summing_tied_gradient(self, labels):
        """While a tied head trains with a loss, the head's and both lookups' gradients of E are summed into one
        V x H tensor (see TiedEmbeddingGrad): a fresh one per forward, set on the two modules for this forward only
        (the graph keeps its own reference), so no later call of either module adds into it."""
        word_embeddings = self.encoder.embeddings.word_embeddings
        if (labels is None or not self.config.tie_word_embeddings or not torch.is_grad_enabled()
                or not word_embeddings.weight.requires_grad):
            yield
            return
        word_embeddings.tied_grad = self.lm_head.tied_grad = TiedEmbeddingGrad()
        try:
            yield
        finally:
            word_embeddings.tied_grad = self.lm_head.tied_grad = None

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, cache=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, num_items_in_batch=None, past_key_values=None,
                **kwargs) -> SWCMSeq2SeqLMOutput | tuple:
        """Logits (or, with labels, loss + token_losses) for decoder_input_ids given the source.

        Pass input_ids (+ attention_mask) or precomputed encoder_outputs. cache: an EncoderDecoderCache (generate()
        makes one; transformers < 5.25 passes it as `past_key_values`); with it, decoder_input_ids are only the new
        tokens.
        num_items_in_batch: the loss divisor (scored tokens over every micro-batch and rank of an optimizer step,
        as the HF Trainer passes it), so that the step's gradient is that of a per-token mean; default: this
        batch's scored tokens.
        """
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            if decoder_attention_mask is None:
                decoder_attention_mask = decoder_mask_from_labels(labels)
        if decoder_input_ids is None:
            raise ValueError("pass decoder_input_ids (<s> <tgt_lang> y) or labels (<tgt_lang> y </s>); "
                             "see swcm/seq2seq_layout.py")
        if output_attentions:
            raise ValueError("SWCM does not return attention weights (output_attentions=True)")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        use_cache = (use_cache if use_cache is not None else self.config.use_cache) and labels is None
        past_key_values = cache if cache is not None else past_key_values

        with self._summing_tied_gradient(labels):
            if encoder_outputs is None:
                encoder_outputs = self.encoder(input_ids, attention_mask, output_hidden_states=output_hidden_states)
            elif not isinstance(encoder_outputs, BaseModelOutput):
                encoder_outputs = BaseModelOutput(*encoder_outputs)
            encoder_hidden = encoder_outputs.last_hidden_state
            cross_mask = attention_mask.bool() if attention_mask is not None else None

            if use_cache and past_key_values is None:
                past_key_values = EncoderDecoderCache(DynamicCache(config=self.config),
                                                      DynamicCache(config=self.config))
            if not use_cache:
                past_key_values = None
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            self_mask = None
            if decoder_attention_mask is not None:
                self_mask = decoder_attention_mask.bool()
                if past and self_mask.shape[1] == decoder_input_ids.shape[1]:
                    # A mask for the new tokens only: the cached ones were attended to before, so they are tokens.
                    self_mask = torch.cat([self_mask.new_ones(self_mask.shape[0], past), self_mask], dim=1)

            hidden = self.encoder.embeddings(decoder_input_ids, past_length=past)
            hidden, decoder_hidden_states = self.decoder(hidden, encoder_hidden, self_mask, cross_mask,
                                                         past_key_values=past_key_values,
                                                         output_hidden_states=output_hidden_states)
            logits, loss, token_losses = self.lm_head(hidden, labels, num_items_in_batch)

        out = SWCMSeq2SeqLMOutput(
            loss=loss, logits=logits, **{_CACHE_FIELD: past_key_values}, decoder_hidden_states=decoder_hidden_states,
            encoder_last_hidden_state=encoder_hidden, encoder_hidden_states=encoder_outputs.hidden_states,
            token_losses=token_losses)
        return out if return_dict else out.to_tuple()


# What `trust_remote_code=True` needs where swcm is not installed. Not transformers' `register_for_auto_class`: that
# copies only files that this one imports relatively from swcm/, and swcm's kernels live in the kernels/ folder.
AUTO_MAP = {"AutoConfig": "modeling_swcm.SWCMConfig",
            "AutoModelForSeq2SeqLM": "modeling_swcm.SWCMForConditionalGeneration"}


def write_remote_code(save_directory) -> None:
    """Writes beside config.json in `save_directory` this modeling file, the batch layout and swcm's kernel sources,
    so that the Auto classes load the directory with `trust_remote_code=True` and its kernels where swcm is absent."""
    here = os.path.dirname(os.path.abspath(__file__))
    files = [os.path.join(here, "modeling_swcm.py"), os.path.join(here, "seq2seq_layout.py")]
    for name in KERNEL_MODULES:
        beside = os.path.join(here, f"{name}.py")   # a remote-code copy of this file has them beside it
        files.append(beside if os.path.isfile(beside) else importlib.util.find_spec(f"swcm_kernels.{name}").origin)
    for f in files:
        shutil.copyfile(f, os.path.join(save_directory, os.path.basename(f)))
