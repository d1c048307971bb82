"""Decoder layout and initialisation (DESIGN.md §2): depths per X, what is copied from where, what is random,
tied/untied head, language-tag rows, and the parameter count of the paper's CINO-base-v2 shape."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers_model import padded_batch, random_xlmr, swcm_from_xlmr, tiny_xlmr_config
from safetensors.torch import load_file
from transformers import XLMRobertaForMaskedLM

from swcm.assets import build_tiny_xlmr
from swcm.convert.from_encoder import convert_from_encoder
from swcm.modeling_swcm import CustomDecoderLayer, NormalDecoderLayer, SWCMConfig, SWCMForConditionalGeneration

# Which encoder layer each decoder layer of a 12-layer encoder with X=3 copies (None: a normal layer).
SOURCES_X3 = [0, 1, 2, None, 3, 4, 5, None, 6, 7, 8, None, 9, 10, 11]


def _source_name(decoder_param: str, enc_layer: int) -> str:
    """Written out independently of the model's own map: sublayer -> the encoder-layer parameter it copies."""
    sub, rest = decoder_param.split(".", 1)
    prefix = f"encoder.encoder.layer.{enc_layer}"
    return {"attention": f"{prefix}.attention.{rest}", "crossattention": f"{prefix}.attention.{rest}",
            "ffn1": f"{prefix}.{rest}", "ffn2": f"{prefix}.{rest}"}[sub]


@pytest.fixture(scope="module")
def xlmr12_dir(tmp_path_factory, demo_tokenizer_dir):
    out = tmp_path_factory.mktemp("xlmr12") / "enc"
    build_tiny_xlmr(out, demo_tokenizer_dir, num_hidden_layers=12, hidden_size=32, num_attention_heads=2,
                    intermediate_size=48, max_position_embeddings=64)
    return out


@pytest.fixture(scope="module")
def converted(xlmr12_dir, tmp_path_factory):
    """{variant: loaded model} for the from-encoder variants, plus the raw encoder checkpoint."""
    root = tmp_path_factory.mktemp("converted")
    variants = {"encoder": {}, "untied": {"tie_word_embeddings": False}, "duplicate": {"decoder_init": "duplicate"},
                "random": {"decoder_init": "random"}}
    models = {}
    for name, kwargs in variants.items():
        out = convert_from_encoder(xlmr12_dir, root / name, normal_layer_every=3, seed=0, **kwargs)
        models[name] = SWCMForConditionalGeneration.from_pretrained(out).eval()
    models["source"] = load_file(str(xlmr12_dir / "model.safetensors"))
    return models


@pytest.mark.parametrize("x,depth", [(0, 12), (1, 23), (2, 17), (3, 15), (4, 14), (5, 14), (6, 13)])
def test_decoder_depth_per_x(x, depth):
    config = SWCMConfig(vocab_size=50, hidden_size=16, num_hidden_layers=12, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, normal_layer_every=x)
    model = SWCMForConditionalGeneration(config)
    kinds = "".join("C" if isinstance(l, CustomDecoderLayer) else "N" for l in model.decoder.layers)
    assert len(model.decoder.layers) == config.decoder_layers == depth
    assert kinds == config.layer_pattern and kinds.count("C") == 12 and not kinds.endswith("N")
    if x == 3:
        assert kinds == "CCCNCCCNCCCNCCC"


def test_encoder_init_copies_every_sublayer_exactly(converted):
    model, src = converted["encoder"], converted["source"]
    params = dict(model.named_parameters())
    for j, enc_layer in enumerate(SOURCES_X3):
        layer = model.decoder.layers[j]
        if enc_layer is None:
            assert isinstance(layer, NormalDecoderLayer)
            continue
        assert isinstance(layer, CustomDecoderLayer)
        for name, p in layer.named_parameters():
            expected = src[_source_name(name, enc_layer).replace("encoder.encoder.", "roberta.encoder.")]
            assert torch.equal(p, expected), f"decoder.layers.{j}.{name}"
            assert p.data_ptr() != params[_source_name(name, enc_layer)].data_ptr()


def test_copies_are_separate_tensors_that_train_independently():
    model = swcm_from_xlmr(random_xlmr(tiny_xlmr_config(num_hidden_layers=3)), normal_layer_every=1)
    dec = model.decoder.layers[0].crossattention.self.query.weight
    enc = model.encoder.encoder.layer[0].attention.self.query.weight
    before = enc.detach().clone()
    assert torch.equal(dec, enc) and dec.data_ptr() != enc.data_ptr()
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=1e-2)
    model.train()
    model(**padded_batch()).loss.backward()
    optimizer.step()
    assert not torch.equal(dec, before), "the decoder copy did not train"
    assert torch.equal(enc, before), "training the decoder copy moved the encoder weight"


def test_normal_layers_are_random(converted):
    model, src = converted["encoder"], converted["source"]
    source_matrices = [t for t in src.values() if t.dim() == 2]
    for j, enc_layer in enumerate(SOURCES_X3):
        if enc_layer is not None:
            continue
        layer = model.decoder.layers[j]
        for name, p in layer.named_parameters():
            if p.dim() == 2:
                assert not any(p.shape == t.shape and torch.equal(p, t) for t in source_matrices), name
                assert 0.01 < p.std().item() < 0.03, f"{name}: not initializer_range-like"  # std 0.02
            elif name.endswith("dense.bias"):
                assert torch.count_nonzero(p) == 0


def test_duplicate_normal_layers_equal_the_custom_layer_before(converted):
    model = converted["duplicate"]
    for j, enc_layer in enumerate(SOURCES_X3):
        if enc_layer is not None:
            continue
        normal, custom = dict(model.decoder.layers[j].named_parameters()), model.decoder.layers[j - 1]
        for name, p in custom.named_parameters():
            if name.startswith("ffn2."):
                continue
            target = name.replace("ffn1.", "ffn.")
            assert torch.equal(normal[target], p) and normal[target].data_ptr() != p.data_ptr(), target
    # ... and the custom layers are still the encoder copies.
    assert torch.equal(model.decoder.layers[4].ffn2.output.dense.weight,
                       converted["source"]["roberta.encoder.layer.3.output.dense.weight"])


def test_random_init_copies_nothing(converted):
    model, src = converted["random"], converted["source"]
    source_matrices = [t for t in src.values() if t.dim() == 2]
    for name, p in model.decoder.named_parameters():
        if p.dim() == 2:
            assert not any(p.shape == t.shape and torch.equal(p, t) for t in source_matrices), name


def test_head_tying_tag_rows_and_bias(converted):
    tied, untied, src = converted["encoder"], converted["untied"], converted["source"]
    original = src["roberta.embeddings.word_embeddings.weight"]
    n = original.shape[0]
    for model in (tied, untied):
        emb = model.get_input_embeddings().weight
        assert emb.shape[0] == n + 5 and torch.equal(emb[:n], original)
        tags = [model.config.lang_token_ids[c] for c in ("bo", "kk", "mn", "ug", "zh")]
        assert tags == list(range(n, n + 5))
        assert torch.allclose(emb[n:], original.mean(0).expand(5, -1), atol=1e-7, rtol=0)
        assert torch.count_nonzero(model.lm_head.bias) == 0 and model.lm_head.bias.shape == (n + 5,)
    assert tied.lm_head.weight.data_ptr() == tied.get_input_embeddings().weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.get_input_embeddings().weight.data_ptr()
    assert not torch.equal(untied.lm_head.weight, untied.get_input_embeddings().weight)
    assert 0.015 < untied.lm_head.weight.std().item() < 0.025  # random, initializer_range 0.02


def _cino_base_v2_formula(tied: bool) -> int:
    V, H, L, I, P, X = 135_135 + 5, 768, 12, 3072, 514, 3
    layer_norm = 2 * H
    embeddings = V * H + P * H + 1 * H + layer_norm               # word, position, token type, LayerNorm
    attention = 4 * (H * H + H) + layer_norm                       # Q, K, V, output dense (+bias), LayerNorm
    ffn = (H * I + I) + (I * H + H) + layer_norm                   # intermediate, output dense, LayerNorm
    encoder = embeddings + L * (attention + ffn)
    custom = 2 * attention + 2 * ffn                               # self-attn, FFN1, cross-attn, FFN2
    normal = 2 * attention + ffn                                   # self-attn, cross-attn, FFN
    n_normal = (L - 1) // X                                        # never after the last custom layer
    head = V + (0 if tied else V * H)                              # bias always; matrix only when untied
    return encoder + L * custom + n_normal * normal + head


@pytest.mark.parametrize("tied", [True, False])
def test_cino_base_v2_parameter_count(tied):
    config = SWCMConfig(vocab_size=135_135 + 5, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=514, normal_layer_every=3,
                        tie_word_embeddings=tied)
    with torch.device("meta"):
        model = SWCMForConditionalGeneration(config)
    n = sum(p.numel() for p in model.parameters())  # parameters() counts a tied tensor once
    assert n == _cino_base_v2_formula(tied)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied


ZERO3_SCRIPT = """
import os, socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import torch, deepspeed
from swcm.modeling_swcm import SWCMConfig, SWCMForConditionalGeneration
deepspeed.init_distributed(dist_backend="gloo")
config = SWCMConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                    max_position_embeddings=64, normal_layer_every=1)
ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
with deepspeed.zero.Init(config_dict_or_path=ds):
    model = SWCMForConditionalGeneration(config)  # post_init sees partitioned (empty) parameters
assert model.lm_head.weight is model.get_input_embeddings().weight
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=ds)
ids = torch.tensor([[0, 5, 6, 7, 2]])
out = engine(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=ids[:, :-1], labels=ids[:, 1:])
engine.backward(out.loss)
engine.step()
assert torch.isfinite(out.loss), out.loss
print("ZERO3-OK")
"""


def test_builds_and_trains_under_zero3_init(tmp_path):
    """DeepSpeed partitions each submodule right after its __init__: _init_weights must cope with empty
    parameters, tying must survive, and the head+loss must run inside a module forward (gathered weight)."""
    (tmp_path / "z3.py").write_text(ZERO3_SCRIPT)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(tmp_path / "z3.py")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0 and "ZERO3-OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("layout", ["sharded", "bin"])
def test_weight_file_layouts_convert_identically(layout, tiny_xlmr_dir, tmp_path):
    """model.safetensors, a sharded safetensors index and pytorch_model.bin give the same converted weights."""
    enc = tmp_path / layout
    shutil.copytree(tiny_xlmr_dir, enc, ignore=lambda d, names: ["model.safetensors"])
    mlm = XLMRobertaForMaskedLM.from_pretrained(tiny_xlmr_dir)
    if layout == "sharded":
        mlm.save_pretrained(enc, max_shard_size="200KB")
        assert (enc / "model.safetensors.index.json").is_file()
    else:
        torch.save(mlm.state_dict(), enc / "pytorch_model.bin")
    reference = convert_from_encoder(tiny_xlmr_dir, tmp_path / "ref")
    converted = convert_from_encoder(enc, tmp_path / "out")
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(converted / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
