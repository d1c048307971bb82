"""trim-vocab is exact on what it keeps: the corpus tokenises to the mapped ids (swcm's loader, plain AutoTokenizer,
the rewritten sentencepiece model alone), the logits at kept ids are the original's, ties and language tags hold,
and bad input is one `error:` line with nothing written.

One tiny encoder with a real sentencepiece model (503 ids, odd on purpose) and one SWCM directory are trimmed once
per module and shared by the assertions."""

import json
import shutil
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, XLMRobertaForMaskedLM

from swcm.assets import build_tiny_xlmr
from swcm.convert.from_encoder import convert_from_encoder
from swcm.convert.trim_vocab import trim_vocab
from swcm.modeling_swcm import SWCMForConditionalGeneration
from swcm.seq2seq_inputs import build_seq2seq_inputs
from swcm.tokenization import load_tokenizer, train_sentencepiece_tokenizer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "mono"
sys.path.insert(0, str(REPO / "launch"))
import convert_checkpoint  # noqa: E402

UNK = 3


def _lines(lang: str, start: int, stop: int) -> list[str]:
    return (DEMO / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[start:stop]


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def spm_encoder(tmp_path_factory):
    """A tiny XLM-R whose directory holds tokenizer.json and sentencepiece.bpe.model (as XLM-R / CINO ship),
    a corpus of Tibetan, Kazakh and Uyghur lines and held-out lines of the same languages."""
    root = tmp_path_factory.mktemp("trim-spm")
    train = root / "train.txt"
    train.write_text("\n".join(_lines("bo", 0, 400) + _lines("kk", 0, 400) + _lines("ug", 0, 400)) + "\n",
                     encoding="utf-8")
    train_sentencepiece_tokenizer([train], root / "tok", vocab_size=501, with_sentencepiece_model=True)
    build_tiny_xlmr(root / "xlmr", root / "tok", num_hidden_layers=2, hidden_size=32, intermediate_size=48)
    shutil.copy(root / "tok" / "sentencepiece.bpe.model", root / "xlmr")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(_lines("bo", 0, 60) + _lines("kk", 0, 60) + _lines("ug", 0, 60)) + "\n",
                      encoding="utf-8")
    held_out = _lines("bo", 500, 600) + _lines("kk", 500, 600) + _lines("ug", 500, 600)
    trimmed = root / "xlmr-trimmed"
    trim_map = trim_vocab(root / "xlmr", [corpus], trimmed)
    return dict(root=root, src=root / "xlmr", out=trimmed, map=trim_map, corpus=corpus, held_out=held_out)


def test_corpus_ids_are_the_mapped_original_ids(spm_encoder):
    old_ids = spm_encoder["map"]["old_ids"]
    new_of = {old: new for new, old in enumerate(old_ids)}
    original = AutoTokenizer.from_pretrained(spm_encoder["src"])
    plain, ours = AutoTokenizer.from_pretrained(spm_encoder["out"]), load_tokenizer(spm_encoder["out"])
    assert len(plain) == len(old_ids) < len(original)
    assert old_ids[:4] == [0, 1, 2, 3] and old_ids[-1] == original.mask_token_id   # specials kept, <mask> last
    assert plain.mask_token_id == len(old_ids) - 1 and plain.unk_token_id == UNK
    lines = [unicodedata.normalize("NFC", x).strip() for x in spm_encoder["corpus"].read_text().splitlines()]
    for line in lines:
        want = [new_of[i] for i in _ids(original, line)]
        assert _ids(plain, line) == want and _ids(ours, line) == want, line
        assert plain.decode(_ids(plain, line)) == original.decode(_ids(original, line))


def test_sentencepiece_model_gives_the_same_ids(spm_encoder):
    """The rewritten sentencepiece model, read by the sentencepiece library itself and converted alone by
    transformers (no tokenizer.json), agrees with the rewritten tokenizer.json."""
    import sentencepiece as spm

    spm_only = spm_encoder["root"] / "spm-only"
    spm_only.mkdir()
    shutil.copy(spm_encoder["out"] / "sentencepiece.bpe.model", spm_only)
    (spm_only / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer"}))
    converted, plain = AutoTokenizer.from_pretrained(spm_only), AutoTokenizer.from_pretrained(spm_encoder["out"])
    processor = spm.SentencePieceProcessor(model_file=str(spm_encoder["out"] / "sentencepiece.bpe.model"))
    assert processor.get_piece_size() + 2 == len(plain)   # + <pad> and <mask>, which only the tokenizer has
    for line in spm_encoder["corpus"].read_text().splitlines()[::7] + spm_encoder["held_out"][::7]:
        ids = _ids(plain, line)
        assert _ids(converted, line) == ids, line
        assert [UNK if i == 0 else i + 1 for i in processor.encode(line)] == ids, line   # XLM-R's offset of one


def test_held_out_text_keeps_tokenising(spm_encoder, tmp_path):
    """Text with dropped pieces still tokenises: by default a character the corpus never used becomes <unk>; with
    --keep-characters nothing becomes <unk> that was not, and the text decodes as before."""
    original = AutoTokenizer.from_pretrained(spm_encoder["src"])
    default = AutoTokenizer.from_pretrained(spm_encoder["out"])
    keep_map = trim_vocab(spm_encoder["src"], [spm_encoder["corpus"]], tmp_path / "keep", keep_characters=True)
    keep = AutoTokenizer.from_pretrained(tmp_path / "keep")
    assert len(spm_encoder["map"]["old_ids"]) < len(keep_map["old_ids"]) < len(original)
    new_unk = 0
    for line in spm_encoder["held_out"]:
        had_unk = UNK in _ids(original, line)
        assert had_unk or UNK not in _ids(keep, line), line
        assert had_unk or keep.decode(_ids(keep, line)) == original.decode(_ids(original, line))
        new_unk += not had_unk and UNK in _ids(default, line)
    assert new_unk > 0   # the held-out text does use characters the corpus lacks: the default is not vacuous


def test_encoder_logits_equal_at_kept_ids(spm_encoder):
    old_ids = torch.tensor(spm_encoder["map"]["old_ids"])
    original = XLMRobertaForMaskedLM.from_pretrained(spm_encoder["src"]).eval()
    trimmed = XLMRobertaForMaskedLM.from_pretrained(spm_encoder["out"]).eval()
    tok, new_tok = AutoTokenizer.from_pretrained(spm_encoder["src"]), AutoTokenizer.from_pretrained(spm_encoder["out"])
    lines = spm_encoder["corpus"].read_text().splitlines()[::20]
    old_batch = tok(lines, return_tensors="pt", padding=True)
    new_batch = new_tok(lines, return_tensors="pt", padding=True)
    assert torch.equal(old_ids[new_batch["input_ids"]], old_batch["input_ids"])
    with torch.no_grad():
        want = original(**old_batch).logits[..., old_ids]
        got = trimmed(**new_batch).logits
    assert _rel_err(got, want) < 1e-6
    assert trimmed.lm_head.decoder.weight is trimmed.roberta.embeddings.word_embeddings.weight


def test_trimmed_encoder_converts(spm_encoder, tmp_path):
    """from-encoder takes a trimmed encoder like any other: the language tags follow the kept ids."""
    swcm = convert_from_encoder(spm_encoder["out"], tmp_path / "swcm", normal_layer_every=0)
    n = len(spm_encoder["map"]["old_ids"])
    config = json.loads((swcm / "config.json").read_text())
    assert config["vocab_size"] == n + 5 and sorted(config["lang_token_ids"].values()) == list(range(n, n + 5))
    line = spm_encoder["corpus"].read_text().splitlines()[3]
    assert _ids(AutoTokenizer.from_pretrained(swcm), line) == _ids(AutoTokenizer.from_pretrained(spm_encoder["out"]),
                                                                    line)


@pytest.fixture(scope="module")
def swcm_dirs(tiny_xlmr_dir, tmp_path_factory):
    """An SWCM directory from the tiny XLM-R, its trim by trim-vocab and the trim made by from-encoder --trim-vocab."""
    root = tmp_path_factory.mktemp("trim-swcm")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(_lines("bo", 0, 40) + _lines("zh", 0, 40) + _lines("ug", 0, 40)) + "\n",
                      encoding="utf-8")
    src = convert_from_encoder(tiny_xlmr_dir, root / "swcm", normal_layer_every=1)
    trim_map = trim_vocab(src, [corpus], root / "trimmed")
    direct = convert_from_encoder(tiny_xlmr_dir, root / "direct", normal_layer_every=1, trim_corpus=[corpus])
    return dict(src=src, out=root / "trimmed", direct=direct, map=trim_map, corpus=corpus)


def test_swcm_logits_ties_and_tags(swcm_dirs):
    old_ids = torch.tensor(swcm_dirs["map"]["old_ids"])
    original = SWCMForConditionalGeneration.from_pretrained(swcm_dirs["src"]).eval()
    trimmed = SWCMForConditionalGeneration.from_pretrained(swcm_dirs["out"]).eval()
    new_of = {old: new for new, old in enumerate(old_ids.tolist())}
    assert trimmed.config.vocab_size == len(old_ids) < original.config.vocab_size
    assert trimmed.config.lang_token_ids == {c: new_of[i] for c, i in original.config.lang_token_ids.items()}
    assert trimmed.lm_head.weight is trimmed.get_input_embeddings().weight
    tok, new_tok = AutoTokenizer.from_pretrained(swcm_dirs["src"]), AutoTokenizer.from_pretrained(swcm_dirs["out"])
    assert {c: new_tok.convert_tokens_to_ids(f"<{c}>") for c in trimmed.config.lang_token_ids} == \
        trimmed.config.lang_token_ids
    lines = swcm_dirs["corpus"].read_text().splitlines()
    picked = range(0, 108, 12)   # 40 lines each of bo, zh, ug
    src, tgt = [lines[i] for i in picked], [lines[i + 6] for i in picked]
    langs = dict(src_lang=[("bo", "zh", "ug")[i // 40] for i in picked], tgt_lang="kk")
    old_batch = build_seq2seq_inputs(tok, src, tgt, max_len=48, **langs)
    new_batch = build_seq2seq_inputs(new_tok, src, tgt, max_len=48, **langs)
    assert torch.equal(old_ids[new_batch["input_ids"]], old_batch["input_ids"])
    keys = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
    with torch.no_grad():
        want = original(**{k: old_batch[k] for k in keys}).logits[..., old_ids]
        got = trimmed(**{k: new_batch[k] for k in keys}).logits
    assert _rel_err(got, want) < 1e-6

    # Generation forced to a language tag: the original restricted to the kept ids generates the same tokens.
    dropped = sorted(set(range(original.config.vocab_size)) - set(old_ids.tolist()))
    kw = dict(num_beams=1, do_sample=False, max_new_tokens=8)
    old_out = original.generate(old_batch["input_ids"], attention_mask=old_batch["attention_mask"],
                                forced_bos_token_id=original.config.lang_token_ids["ug"], suppress_tokens=dropped, **kw)
    new_out = trimmed.generate(new_batch["input_ids"], attention_mask=new_batch["attention_mask"],
                               forced_bos_token_id=trimmed.config.lang_token_ids["ug"], **kw)
    assert new_out[:, 1].eq(trimmed.config.lang_token_ids["ug"]).all()
    assert torch.equal(old_ids[new_out], old_out)


def test_from_encoder_trim_vocab_equals_trimming_afterwards(swcm_dirs):
    from safetensors.torch import load_file

    a, b = load_file(swcm_dirs["out"] / "model.safetensors"), load_file(swcm_dirs["direct"] / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("tokenizer.json", "config.json", "generation_config.json"):
        assert (swcm_dirs["out"] / name).read_text() == (swcm_dirs["direct"] / name).read_text(), name
    assert json.loads((swcm_dirs["direct"] / "trim_map.json").read_text())["old_ids"] == swcm_dirs["map"]["old_ids"]
    assert "## Trimmed vocabulary" in (swcm_dirs["direct"] / "README.md").read_text()


def test_shard_corpus_keeps_what_its_text_keeps(swcm_dirs, tmp_path):
    """A shard directory of the corpus (prepare_data with the model's tokenizer) counts the same ids as the text."""
    from swcm.data.prepare import prepare

    prepare(swcm_dirs["src"], tmp_path / "shards", mono=[("bo", str(swcm_dirs["corpus"]))], max_len=64,
            show_progress=False)
    trim_map = trim_vocab(swcm_dirs["src"], [tmp_path / "shards"], tmp_path / "trimmed")
    assert trim_map["old_ids"] == swcm_dirs["map"]["old_ids"]


def test_untied_head_keeps_its_own_rows(tiny_xlmr_dir, swcm_dirs, tmp_path):
    from safetensors.torch import load_file

    src = convert_from_encoder(tiny_xlmr_dir, tmp_path / "untied", normal_layer_every=0, tie_word_embeddings=False)
    old_ids = torch.tensor(trim_vocab(src, [swcm_dirs["corpus"]], tmp_path / "trimmed")["old_ids"])
    before, after = load_file(src / "model.safetensors"), load_file(tmp_path / "trimmed" / "model.safetensors")
    assert before.keys() == after.keys() and "lm_head.weight" in after
    for key, tensor in before.items():
        rows = key in ("lm_head.weight", "lm_head.bias", "encoder.embeddings.word_embeddings.weight")
        assert torch.equal(after[key], tensor[old_ids] if rows else tensor), key
    assert not json.loads((tmp_path / "trimmed" / "config.json").read_text())["tie_word_embeddings"]


def test_min_count_keeps_fewer_pieces(swcm_dirs, tmp_path):
    counts = {}
    tok = AutoTokenizer.from_pretrained(swcm_dirs["src"])
    for line in swcm_dirs["corpus"].read_text().splitlines():
        for i in _ids(tok, unicodedata.normalize("NFC", line).strip()):
            counts[i] = counts.get(i, 0) + 1
    trim_map = trim_vocab(swcm_dirs["src"], [swcm_dirs["corpus"]], tmp_path / "t", min_count=3)
    kept, frequent = set(trim_map["old_ids"]), {i for i, n in counts.items() if n >= 3}
    assert frequent <= kept and len(kept) < len(swcm_dirs["map"]["old_ids"])
    spec = json.loads((swcm_dirs["src"] / "tokenizer.json").read_text())
    added = {t["id"] for t in spec["added_tokens"]}
    lowest = int(np.argmin([score for _piece, score in spec["model"]["vocab"]]))
    assert kept - frequent - added <= {lowest}   # nothing else: the lowest-scoring piece fixes <unk>'s score


def run_cli(capsys, *args) -> str:
    capsys.readouterr()
    assert convert_checkpoint.main(["trim-vocab", *map(str, args)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_bad_input_is_one_error_line(swcm_dirs, tiny_xlmr_dir, tmp_path, capsys):
    src, corpus = swcm_dirs["src"], swcm_dirs["corpus"]
    assert "lies inside the input" in run_cli(capsys, "--model", src, "--corpus", corpus, "--out", src / "sub")
    assert "not found" in run_cli(capsys, "--model", src, "--corpus", tmp_path / "nope.txt", "--out", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    assert "index.json" in run_cli(capsys, "--model", src, "--corpus", tmp_path / "empty", "--out", tmp_path / "o")
    assert "--min-count 0" in run_cli(capsys, "--model", src, "--corpus", corpus, "--out", tmp_path / "o",
                                      "--min-count", "0")
    assert "not empty" in run_cli(capsys, "--model", src, "--corpus", corpus, "--out", swcm_dirs["out"])
    capsys.readouterr()
    assert convert_checkpoint.main(["from-encoder", "--encoder", str(tiny_xlmr_dir), "--out", str(tmp_path / "o"),
                                    "--trim-vocab", str(tmp_path / "nope.txt")]) == 2
    assert capsys.readouterr().err.startswith("error: --trim-vocab ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
