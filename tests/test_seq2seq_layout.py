"""One batch layout (swcm/seq2seq_layout.py): the data loader's collate and swcm.seq2seq_inputs build the same
tensors for the same example, decoder inputs are BART's shift of the labels, and the model derives them itself."""

import numpy as np
import torch
from helpers_model import padded_batch, random_xlmr, swcm_from_xlmr, tiny_xlmr_config
from transformers import AutoTokenizer, DataCollatorForSeq2Seq
from transformers.models.bart.modeling_bart import shift_tokens_right

from swcm.data.batching import collate, filler_batch, to_tensors
from swcm.seq2seq_inputs import build_seq2seq_inputs
from swcm.seq2seq_layout import IGNORE_INDEX, shift_right
from swcm.tokenization import add_language_tags

SRC = ["今天天气很好，我们去学校。", "你好"]
TGT = ["བཀྲ་ཤིས་བདེ་ལེགས།", "ང་ཚོ་སློབ་གྲྭར་འགྲོ། ཡག་པོ་འདུག"]


def test_shift_right_is_barts(demo_tokenizer_dir):
    labels = padded_batch()["labels"]
    assert torch.equal(shift_right(labels, 0, 1), shift_tokens_right(labels, 1, 0))


def test_collate_and_seq2seq_inputs_build_the_same_tensors(demo_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(demo_tokenizer_dir)
    tags = add_language_tags(tok)
    from_text = build_seq2seq_inputs(tok, SRC, TGT, "zh", "bo")

    ids = [np.array(tok(t, add_special_tokens=False)["input_ids"]) for t in SRC]
    ys = [np.array(tok(t, add_special_tokens=False)["input_ids"]) for t in TGT]
    encoder = [np.concatenate([[tok.bos_token_id, tags["zh"]], x, [tok.eos_token_id]]) for x in ids]
    from_ids = to_tensors(collate(encoder, ys, [tags["bo"]] * 2, bos=tok.bos_token_id, eos=tok.eos_token_id,
                                  pad=tok.pad_token_id, multiple=1, task=["mt"] * 2, src_lang=["zh"] * 2,
                                  tgt_lang=["bo"] * 2, sample_id=["a", "b"]))
    for key in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels"):
        assert torch.equal(from_text[key], from_ids[key]), key
    short = len(ys[0]) + 2   # the first target is the shorter one: its labels end in padding
    assert from_ids["labels"][0, :short].tolist() == [tags["bo"], *ys[0].tolist(), tok.eos_token_id]
    assert (from_ids["labels"][0, short:] == IGNORE_INDEX).all()


def test_filler_batch_scores_nothing_and_attends_to_its_first_position():
    batch = filler_batch(bos=0, eos=2, pad=1, multiple=8)
    assert (batch["labels"] == IGNORE_INDEX).all() and batch["is_padding"]
    assert batch["decoder_input_ids"][0, 0] == 0 and (batch["decoder_input_ids"][0, 1:] == 1).all()
    assert batch["decoder_attention_mask"][0].tolist() == [1] + [0] * 7   # never a query row with no key


def test_model_derives_decoder_inputs_from_labels_as_the_hf_collator_does(demo_tokenizer_dir):
    model = swcm_from_xlmr(random_xlmr(tiny_xlmr_config()), fused_lm_head_ce=False)
    batch = padded_batch()
    explicit = model(**batch)
    derived = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert torch.allclose(explicit.loss, derived.loss, atol=1e-6)
    scored = batch["labels"] != IGNORE_INDEX
    assert torch.allclose(explicit.logits[scored], derived.logits[scored], atol=1e-5)

    features = [{"input_ids": row[m.bool()].tolist(), "labels": lab[lab != IGNORE_INDEX].tolist()}
                for row, m, lab in zip(batch["input_ids"], batch["attention_mask"], batch["labels"])]
    collated = DataCollatorForSeq2Seq(AutoTokenizer.from_pretrained(demo_tokenizer_dir), model=model)(features)
    assert torch.equal(collated["labels"], batch["labels"])
    dec_mask = batch["decoder_attention_mask"].bool()
    assert torch.equal(collated["decoder_input_ids"][dec_mask], batch["decoder_input_ids"][dec_mask])
    hf = model(**collated)   # no decoder mask from the collator: causal attention alone must give the same loss
    assert torch.allclose(hf.loss, explicit.loss, atol=1e-5)


def test_num_items_in_batch_divides_the_token_sum():
    model = swcm_from_xlmr(random_xlmr(tiny_xlmr_config()), fused_lm_head_ce=False)
    batch = padded_batch()
    out = model(**batch, num_items_in_batch=torch.tensor(40.0))
    assert torch.allclose(out.loss, out.token_losses.sum() / 40, rtol=1e-6)
