"""swcm/tasks/layouts.py: the tags layout gives the training builder's tensors (the tag's label masked), the codes
layout mBART-50's own tokenizer's, and the convention is found from the tokenizer and the data's languages."""

import pytest
import torch

from helpers_seq2seq import mbart50_tokenizer
from swcm.seq2seq_inputs import build_seq2seq_inputs
from swcm.tasks.layouts import CODES, NONE, TAGS, LayoutError, find_layout, tags_layout

SOURCES = ["你好，世界。", "今天天气很好，我们去公园散步吧。"]
TARGETS = ["བཀྲ་ཤིས་བདེ་ལེགས།", "ཉི་མ།"]


@pytest.mark.parametrize("max_len", [256, 7])   # 7: both sides truncated
def test_tags_layout_is_the_training_builders_batch(tokenizer, max_len):
    layout = tags_layout(tokenizer, ["zh", "bo"])
    mine = layout.inputs(SOURCES, TARGETS, ["zh", "zh"], ["bo", "bo"], max_len=max_len)
    theirs = build_seq2seq_inputs(tokenizer, SOURCES, TARGETS, "zh", "bo", max_len=max_len)
    theirs["labels"][:, 0] = -100   # the tag is given to the decoder, not scored
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(mine[key], theirs[key]), key
    prefix = layout.inputs(SOURCES, None, ["zh", "zh"], ["bo", "bo"])["decoder_input_ids"]
    assert prefix.tolist() == [[tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<bo>")]] * 2


def test_codes_layout_is_mbart50s_own(demo_tokenizer_dir):
    tok = mbart50_tokenizer(demo_tokenizer_dir)
    layout = find_layout(tok, tok.eos_token_id, ["zh", "kk"])
    assert layout.kind == CODES and layout.lang_ids == {"zh": tok.convert_tokens_to_ids("zh_CN"),
                                                      "kk": tok.convert_tokens_to_ids("kk_KZ")}
    tok.src_lang, tok.tgt_lang = "zh_CN", "kk_KZ"
    for source, target in zip(SOURCES, ["Сәлем әлем.", "Бүгін ауа райы жақсы."]):
        own = tok(source, text_target=target)
        mine = layout.inputs([source], [target], ["zh"], ["kk"])
        assert mine["input_ids"][0].tolist() == own["input_ids"]
        assert mine["labels"][0].tolist() == [-100] + own["labels"][1:]
        assert mine["decoder_input_ids"][0].tolist() == [tok.eos_token_id] + own["labels"][:-1]


def test_which_layout(tokenizer, demo_tokenizer_dir):
    from transformers import AutoTokenizer

    assert find_layout(tokenizer, 0, ["zh", "bo"]).kind == TAGS
    plain = AutoTokenizer.from_pretrained(str(demo_tokenizer_dir))           # no language tokens at all
    none = find_layout(plain, 0, ["zh", "bo"])
    assert none.kind == NONE and none.languages() is None
    batch = none.inputs(["你好"], ["ཉི་མ།"], ["zh"], ["bo"])
    assert batch["input_ids"][0, 0] != plain.bos_token_id and batch["labels"][0, 0] != -100
    mbart = mbart50_tokenizer(demo_tokenizer_dir)
    with pytest.raises(LayoutError, match=r"language 'bo': the tokenizer marks languages .* --lang-map bo=TOKEN"):
        find_layout(mbart, 2, ["zh", "bo"])                                  # mBART-50 has no Tibetan
    chosen = find_layout(mbart, 2, ["zh", "bo"], {"zh": "zh_CN", "bo": "ne_NP"})
    assert chosen.lang_ids["bo"] == mbart.convert_tokens_to_ids("ne_NP")
    with pytest.raises(LayoutError, match="no such token"):
        find_layout(mbart, 2, ["zh"], {"zh": "zh_XX"})
    plain.add_special_tokens({"additional_special_tokens": ["xx_Aaaa", "xx_Bbbb"]})
    with pytest.raises(LayoutError, match=r"language 'xx': several tokens could mark it \(xx_Aaaa, xx_Bbbb\)"):
        find_layout(plain, 0, ["xx"])
