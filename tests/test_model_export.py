"""Export: an exported directory loads with trust_remote_code where swcm is not importable and gives the same
logits and beams; generation with the KV cache equals generation without it; resizing the vocabulary works."""

import json

import pytest
import torch
from helpers_model import padded_batch, random_xlmr, swcm_from_xlmr, tiny_xlmr_config
from without_swcm import run_without_swcm
from transformers import AutoTokenizer, EncoderDecoderCache

from swcm.convert.from_encoder import convert_from_encoder
from swcm.modeling_swcm import SWCMForConditionalGeneration
from swcm.seq2seq_inputs import build_seq2seq_inputs
from swcm.seq2seq_layout import IGNORE_INDEX
from swcm.tokenization import add_language_tags

SRC = ["བཀྲ་ཤིས་བདེ་ལེགས། ང་ཚོ་སློབ་གྲྭར་འགྲོ།", "今天天气很好"]
TGT = ["你好", "بۈگۈن ھاۋا ياخشى"]


@pytest.fixture(scope="module")
def exported(tiny_xlmr_dir, tmp_path_factory):
    return convert_from_encoder(tiny_xlmr_dir, tmp_path_factory.mktemp("export") / "swcm", normal_layer_every=1)


REMOTE = """
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
probe = torch.load("probe.pt", weights_only=True)
model = AutoModelForSeq2SeqLM.from_pretrained({path!r}, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained({path!r})
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert type(model.config).__name__ == "SWCMConfig"
ids = [tok(t, add_special_tokens=False)["input_ids"] for t in probe["texts"]]
inputs = dict(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"])
with torch.no_grad():
    logits = model(**inputs, decoder_input_ids=probe["decoder_input_ids"],
                   decoder_attention_mask=probe["decoder_attention_mask"]).logits
beams = model.generate(**inputs, num_beams=4, max_new_tokens=8, forced_bos_token_id=probe["tag"].item())
torch.save(dict(logits=logits, beams=beams, ids=ids, tied=model.lm_head.weight is model.get_input_embeddings().weight,
                tag=tok.convert_tokens_to_ids("<bo>")), "result.pt")
"""


@pytest.mark.slow
def test_remote_code_load_gives_same_logits_and_beams(exported, tmp_path):
    tok = AutoTokenizer.from_pretrained(exported)
    model = SWCMForConditionalGeneration.from_pretrained(exported).eval()
    batch = build_seq2seq_inputs(tok, SRC, TGT, src_lang=["bo", "zh"], tgt_lang=["zh", "ug"], max_len=32)
    tag = torch.tensor(model.config.lang_token_ids["bo"])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=batch["decoder_input_ids"],
                       decoder_attention_mask=batch["decoder_attention_mask"]).logits
    beams = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], num_beams=4,
                           max_new_tokens=8, forced_bos_token_id=tag.item())
    torch.save({**{k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids",
                                         "decoder_attention_mask")}, "tag": tag, "texts": SRC}, tmp_path / "probe.pt")
    proc = run_without_swcm(REMOTE.format(path=str(exported)), tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(tmp_path / "result.pt", weights_only=True)
    assert remote["ids"] == [tok(t, add_special_tokens=False)["input_ids"] for t in SRC]
    assert remote["tag"] == tag.item() and remote["tied"]
    err = (remote["logits"] - logits).abs().max().item()
    assert err < 1e-5, f"remote vs in-process logits differ by {err:.2e}"
    assert torch.equal(remote["beams"], beams)
    assert beams[:, 0].eq(0).all() and beams[:, 1].eq(tag).all()  # <s> <bo> ...


def _generation_model():
    return swcm_from_xlmr(random_xlmr(tiny_xlmr_config(num_hidden_layers=3)), normal_layer_every=2)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_generate_with_cache_equals_without(num_beams):
    model = _generation_model()
    batch = padded_batch()
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], num_beams=num_beams,
                  do_sample=False, max_new_tokens=10, forced_bos_token_id=90, output_scores=True,
                  return_dict_in_generate=True)
    cached, uncached = model.generate(**kwargs, use_cache=True), model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert cached.sequences[:, 1].eq(90).all()
    for a, b in zip(cached.scores, uncached.scores):
        finite = a.isfinite()
        assert torch.equal(finite, b.isfinite()) and torch.allclose(a[finite], b[finite], atol=1e-5)


def test_incremental_decoding_matches_full_forward():
    model = _generation_model()
    batch = padded_batch()
    enc = model.get_encoder()(batch["input_ids"], batch["attention_mask"])
    dec = torch.tensor([[0, 90, 5, 17, 33, 8], [0, 91, 44, 6, 9, 12], [0, 92, 7, 7, 7, 2]])
    with torch.no_grad():
        full = model(encoder_outputs=enc, attention_mask=batch["attention_mask"], decoder_input_ids=dec,
                     use_cache=False).logits
        cache, steps = None, []
        for t in range(dec.shape[1]):
            out = model(encoder_outputs=enc, attention_mask=batch["attention_mask"], decoder_input_ids=dec[:, t:t + 1],
                        past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    assert isinstance(cache, EncoderDecoderCache) and cache.get_seq_length() == dec.shape[1]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("tied", [True, False])
def test_resize_token_embeddings(tied, tmp_path):
    model = swcm_from_xlmr(random_xlmr(tiny_xlmr_config()), tie_word_embeddings=tied)
    model.resize_token_embeddings(101)
    assert model.get_input_embeddings().weight.shape[0] == 101 == model.config.vocab_size
    assert model.lm_head.weight.shape[0] == 101 and model.lm_head.bias.shape == (101,)
    assert (model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()) == tied
    batch = padded_batch()
    assert model(**batch).token_losses.shape == batch["labels"].shape
    model.save_pretrained(tmp_path)
    reloaded = SWCMForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vocab_size"] == 101 and config["tie_word_embeddings"] == tied


def test_seq2seq_inputs_layout(demo_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(demo_tokenizer_dir)
    tags = add_language_tags(tok)
    batch = build_seq2seq_inputs(tok, ["今天天气很好", "你好"], ["你好", "今天天气很好"], "zh", "bo", max_len=6)
    y = tok("你好", add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][1, :len(y) + 3].tolist() == [0, tags["zh"], *y, 2]
    assert batch["decoder_input_ids"][0, :len(y) + 2].tolist() == [0, tags["bo"], *y]
    assert batch["labels"][0, :len(y) + 2].tolist() == [tags["bo"], *y, 2]  # the tag is the first label token
    assert batch["labels"][0, len(y) + 2:].eq(IGNORE_INDEX).all()  # padding is not scored
    assert batch["input_ids"].shape[1] <= 6 and batch["decoder_input_ids"].shape[1] <= 5  # <s> <tag> y </s> <= 6
    assert batch["labels"][1, -1].item() == 2  # a truncated target still ends with </s>
    prefix = build_seq2seq_inputs(tok, ["你好"], None, "zh", "ug")
    assert prefix["decoder_input_ids"].tolist() == [[0, tags["ug"]]] and "labels" not in prefix
