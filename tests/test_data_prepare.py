"""prepare_data: shard format and index, document splitting, the round trip of the real text through the
shards, and what happens to bad input (counted skips vs errors)."""

import difflib
import json
import os
import re
import subprocess
import sys
import unicodedata
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from swcm.data import text as T
from swcm.data.prepare import prepare
from swcm.data.shards import DataError, load_index, load_lengths, read_shard, sample_source, sha256_file

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
NTREX = DEMO / "parallel" / "ntrex128"
SHARED = Path(os.environ.get("SWCM_FULL_CORPUS", "/nonexistent"))   # the corpus data/demo was cut from


@pytest.fixture(scope="module")
def demo_shards(tokenizer, tmp_path_factory):
    """The whole demo corpus: mono bo/kk/ug/zh, and NTREX train x-zh for bo, kk, mn, ug (mn exists only here)."""
    mono = [("bo", str(DEMO / "mono/bo.txt")), ("bo", str(DEMO / "mono/bo_speech.txt")),
            ("kk", str(DEMO / "mono/kk.txt")), ("ug", str(DEMO / "mono/ug.txt")),
            ("ug", str(DEMO / "mono/ug_proverbs.txt")), ("zh", str(DEMO / "mono/zh.txt"))]
    parallel = [(x, "zh", str(NTREX / f"ntrex128.train.{x}"), str(NTREX / "ntrex128.train.zh"))
                for x in ("bo", "kk", "mn", "ug")]
    out = tmp_path_factory.mktemp("demo") / "shards"
    prepare(tokenizer.saved_dir, out, mono=mono, parallel=parallel, samples_per_shard=2000, show_progress=False,
            args=["test"])
    return out


# -- format and index -------------------------------------------------------------------------------------------

def test_index_records_shards_counts_hashes_and_lengths(demo_shards, tokenizer):
    from swcm.tokenization import tokenizer_fingerprint

    index = load_index(demo_shards)
    assert index["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert index["tokenizer"]["lang_tags"] == {c: tokenizer.convert_tokens_to_ids(f"<{c}>")
                                               for c in ("bo", "kk", "mn", "ug", "zh")}
    assert index["args"] == ["test"]
    assert not [p for p in demo_shards.iterdir() if p.name.endswith(".tmp")]
    lengths = load_lengths(demo_shards, index)
    for name, info in index["shards"].items():
        assert sha256_file(demo_shards / name) == info["sha256"]
        samples = read_shard(str(demo_shards / name), expect_sha256=info["sha256"])
        assert len(samples) == info["samples"] <= 2000
        stream = index["streams"][info["stream"]]
        assert {s["meta"]["task"] for s in samples} == {stream["task"]}   # one stream per shard
        got = [len(s["ids"]) if "ids" in s else [len(s["src"]), len(s["tgt"])] for s in samples]
        assert np.array_equal(np.asarray(got), lengths[name])
        assert info["tokens"] == int(lengths[name].sum())
        assert all(max(np.atleast_1d(n)) <= 256 - 3 for n in got)
    for task in ("mono", "parallel"):
        for langs, t in index["totals"][task].items():
            stream = index["streams"][f"{task}/{langs}"]
            assert t == {"samples": stream["samples"], "tokens": stream["tokens"]}
    assert set(index["totals"]["parallel"]) == {"bo-zh", "kk-zh", "mn-zh", "ug-zh"}


def test_long_documents_are_split_at_sentence_ends(tokenizer, tmp_path):
    sentences = ["这是第一个句子，它有一些字。", "第二个句子比较长一点，里面有很多很多的汉字和标点。", "短句。"] * 6
    doc = tmp_path / "zh.txt"
    doc.write_text("".join(sentences) + "\n" + "没有句号的一行" * 40 + "\n", encoding="utf-8")
    out = tmp_path / "shards"
    prepare(tokenizer.saved_dir, out, mono=[("zh", str(doc))], max_len=40, show_progress=False)
    index = load_index(out)
    samples = [s for name in sorted(index["shards"]) for s in read_shard(str(out / name))]
    by_line = defaultdict(list)
    for s in samples:
        _, line, piece = s["meta"]["id"].split(":")
        by_line[int(line)].append((int(piece), s["ids"]))
    for line, text in ((1, "".join(sentences)), (2, "没有句号的一行" * 40)):
        pieces = [ids for _, ids in sorted(by_line[line])]
        assert len(pieces) > 1 and all(len(p) <= 40 - 3 for p in pieces)
        whole = tokenizer(unicodedata.normalize("NFC", text), add_special_tokens=False)["input_ids"]
        assert np.concatenate(pieces).tolist() == whole        # nothing lost or duplicated at the cuts
        if line == 1:   # every piece of the punctuated line ends at a sentence end
            assert all(tokenizer.convert_ids_to_tokens(int(p[-1]))[-1] == "。" for p in pieces)


def test_split_into_pieces_falls_back_to_token_windows():
    assert T.split_into_pieces(10, [3, 6], 10) == [(0, 10)]
    assert T.split_into_pieces(10, [3, 6], 7) == [(0, 6), (6, 10)]
    assert T.split_into_pieces(20, [15], 6) == [(0, 6), (6, 12), (12, 15), (15, 20)]


# -- round trip of the real text --------------------------------------------------------------------------------

def _squash(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def recovery(ref: str, hyp: str) -> int:
    """Characters of `ref` found, in order, in `hyp` (an <unk> matches nothing)."""
    if ref == hyp:
        return len(ref)
    return sum(b.size for b in difflib.SequenceMatcher(None, ref, hyp, autojunk=False).get_matching_blocks())


def roundtrip(shard_dir, tokenizer, max_lines=None):
    """Per language: characters recovered from decoding the shards, against the NFC text as the tokenizer
    normalises it (NFKC, whitespace) and against the bare NFC text; plus the <unk> count."""
    norm = tokenizer.backend_tokenizer.normalizer.normalize_str
    index = load_index(shard_dir)
    docs = defaultdict(dict)   # (lang, file, line) -> {piece: ids}; a zh line shared by several pairs counts once
    for name in sorted(index["shards"]):
        for s in read_shard(str(shard_dir / name)):
            m = s["meta"]
            _, _, *piece = m["id"].split(":")
            where = sample_source(index, m["id"])
            if "ids" in s:
                docs[(m["lang"], *where[0])][int(piece[0]) if piece else 0] = s["ids"]
            else:
                (src_file, line), (tgt_file, _) = where
                docs[(m["src_lang"], src_file, line)][0] = s["src"]
                docs[(m["tgt_lang"], tgt_file, line)][0] = s["tgt"]
    lines = {}
    stats = defaultdict(lambda: {"chars": 0, "normalised": 0, "nfc": 0, "unk": 0, "unk_chars": 0,
                                 "exact_lines_without_unk": 0, "lines_without_unk": 0})
    for (lang, file, line), pieces in sorted(docs.items()):
        if max_lines and line > max_lines:
            continue
        if file not in lines:
            lines[file] = Path(file).read_bytes().split(b"\n")
        ref = unicodedata.normalize("NFC", lines[file][line - 1].decode("utf-8")).strip()
        ids = np.concatenate([pieces[k] for k in sorted(pieces)]).tolist()
        hyp = _squash(tokenizer.decode(ids, clean_up_tokenization_spaces=False).replace(tokenizer.unk_token, "\uffff"))
        target = _squash(norm(ref).replace("▁", " "))
        st = stats[lang]
        st["chars"] += len(target)
        st["normalised"] += recovery(target, hyp)
        st["nfc"] += recovery(_squash(ref), hyp) * len(target) / max(1, len(_squash(ref)))
        n_unk = ids.count(tokenizer.unk_token_id)
        st["unk"] += n_unk
        if n_unk:   # the characters the tokenizer could only write as <unk>
            enc = tokenizer(ref, add_special_tokens=False, return_offsets_mapping=True)
            st["unk_chars"] += sum(b - a for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])
                                   if i == tokenizer.unk_token_id)
        if n_unk == 0:
            st["lines_without_unk"] += 1
            st["exact_lines_without_unk"] += hyp == target
    return {lang: {**st, "recovered": st["normalised"] / st["chars"], "recovered_vs_nfc": st["nfc"] / st["chars"],
                   "recovered_of_representable": st["normalised"] / (st["chars"] - st["unk_chars"])}
            for lang, st in stats.items()}


def test_roundtrip_recovers_the_text_of_every_language(demo_shards, tokenizer):
    """Decoding the shard ids gives back the text for every language: each line without an <unk> exactly
    (as the tokenizer's NFKC normaliser writes it), and >= 99% of the characters the tokenizer can represent
    (all characters minus those it writes as <unk>)."""
    stats = roundtrip(demo_shards, tokenizer)
    print(json.dumps({k: {m: round(v, 5) if isinstance(v, float) else v for m, v in s.items()}
                      for k, s in stats.items()}, indent=1))
    assert set(stats) == {"bo", "kk", "mn", "ug", "zh"}
    for lang, st in stats.items():
        assert st["exact_lines_without_unk"] == st["lines_without_unk"], lang
        assert st["recovered_of_representable"] >= 0.99, (lang, st)


@pytest.mark.skipif(not SHARED.is_dir(), reason="SWCM_FULL_CORPUS does not point at the full corpus")
def test_roundtrip_on_the_shared_corpus(tokenizer, tmp_path):
    """The same on the full-size corpus files, capped at their first 3,000 lines each to bound the run time."""
    cap = 3000
    mono = []
    for lang in ("bo", "kk", "ug", "zh"):
        for f in sorted((SHARED / "mono" / lang).glob(f"*.{lang}")):
            head = tmp_path / f.name
            head.write_bytes(b"\n".join(f.read_bytes().split(b"\n")[:cap]) + b"\n")
            mono.append((lang, str(head)))
    nt = SHARED / "parallel" / "ntrex128"
    parallel = [("mn", "zh", str(nt / "ntrex128.train.mn"), str(nt / "ntrex128.train.zh"))]
    out = tmp_path / "shards"
    prepare(tokenizer.saved_dir, out, mono=mono, parallel=parallel, show_progress=False)
    stats = roundtrip(out, tokenizer)
    print(json.dumps(stats, indent=1, default=float))
    for lang, st in stats.items():
        assert st["exact_lines_without_unk"] == st["lines_without_unk"], lang
        assert st["recovered_of_representable"] >= 0.99, (lang, st)


# -- bad input --------------------------------------------------------------------------------------------------

def test_bad_lines_are_counted_per_file_never_dropped_silently(tokenizer, tmp_path):
    good = DEMO.joinpath("mono/kk.txt").read_bytes().split(b"\n")[:20]
    f = tmp_path / "kk.txt"
    f.write_bytes(b"\n".join(good[:10] + [b"\xff\xfe not utf-8 \xc3", b"", b"   ", b"bell\x07garbage\x1b[0m"]
                             + good[10:] + [b"a literal <mask> token"]) + b"\n")
    index = prepare(tokenizer.saved_dir, tmp_path / "out", mono=[("kk", str(f))], show_progress=False)
    (report,) = index["inputs"]
    assert report["skipped"] == {str(f): {"invalid_utf8": 1, "empty": 2, "control_chars": 1,
                                          "special_token_text": 1}}
    assert report["lines"] == 25 and report["used_lines"] == 20 == index["totals"]["mono"]["kk"]["samples"]


def test_parallel_pair_with_a_bad_side_is_skipped_and_counted(tokenizer, tmp_path):
    src, tgt = tmp_path / "a.kk", tmp_path / "a.zh"
    src.write_bytes("Сәлем әлем\n".encode() + b"\xff\xfe\n" + "Екінші жол\n".encode())
    tgt.write_text("你好世界\n第二行\n\n", encoding="utf-8")
    index = prepare(tokenizer.saved_dir, tmp_path / "out", parallel=[("kk", "zh", str(src), str(tgt))],
                    show_progress=False)
    (report,) = index["inputs"]
    assert report["skipped"] == {str(src): {"invalid_utf8": 1}, str(tgt): {"empty": 1}}
    assert index["totals"]["parallel"]["kk-zh"]["samples"] == 1


def test_parallel_jsonl_streams_and_bad_records(tokenizer, tmp_path):
    f = tmp_path / "pairs.jsonl"
    recs = [{"src": "Сәлем", "tgt": "你好", "src_lang": "kk", "tgt_lang": "zh"},
            {"src": "Сайн уу", "tgt": "你好", "src_lang": "mn", "tgt_lang": "zh"},
            {"src": "Қайырлы таң", "tgt": "早上好", "src_lang": "kk", "tgt_lang": "zh"}]
    f.write_text("\n".join([json.dumps(r, ensure_ascii=False) for r in recs] + ["{not json", '{"src": "x"}']) + "\n")
    index = prepare(tokenizer.saved_dir, tmp_path / "out", parallel_jsonl=[str(f)], show_progress=False)
    assert index["totals"]["parallel"] == {"kk-zh": {"samples": 2, "tokens": index["streams"]["parallel/kk-zh"]["tokens"]},
                                           "mn-zh": {"samples": 1, "tokens": index["streams"]["parallel/mn-zh"]["tokens"]}}
    assert {str(f): {"invalid_json": 2}} in [r["skipped"] for r in index["inputs"]]


@pytest.mark.parametrize("case", ["empty_file", "nothing_usable", "misaligned", "missing_tag", "not_empty_out",
                                  "duplicate_input"])
def test_unusable_input_is_a_clear_error(tokenizer, demo_tokenizer_dir, tmp_path, case):
    kk = tmp_path / "kk.txt"
    kk.write_text("Бір\nЕкі\nҮш\n", encoding="utf-8")
    zh = tmp_path / "zh.txt"
    zh.write_text("一\n二\n", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"\xff\xff\n\x00\x01\n\n")
    out = tmp_path / "out"
    kwargs = {"mono": [("kk", str(kk))]}
    tok_dir, expect = tokenizer.saved_dir, None
    if case == "empty_file":
        kwargs, expect = {"mono": [("kk", str(empty))]}, f"{empty}: input file is empty"
    elif case == "nothing_usable":
        kwargs, expect = {"mono": [("kk", str(garbage))]}, f"{garbage}: no usable text"
    elif case == "misaligned":
        kwargs = {"parallel": [("kk", "zh", str(kk), str(zh))]}
        expect = f"{kk} has 3 lines, {zh} has 2 lines"
    elif case == "missing_tag":
        tok_dir, expect = demo_tokenizer_dir, "no language tag for <kk>"
    elif case == "not_empty_out":
        out.mkdir()
        (out / "old.tar").write_bytes(b"x")
        expect = "is not empty (pass --overwrite"
    elif case == "duplicate_input":
        kwargs, expect = {"mono": [("kk", str(kk)), ("kk", str(kk))]}, "given more than once"
    with pytest.raises(DataError) as e:
        prepare(tok_dir, out, show_progress=False, **kwargs)
    assert expect in str(e.value)
    assert not (out / "index.json").exists()


def test_cli_reports_skips_and_errors(tokenizer, tmp_path):
    f = tmp_path / "zh.txt"
    f.write_bytes("第一行。\n".encode() + b"\xff\n" + "第三行。\n".encode())
    cmd = [sys.executable, str(ROOT / "launch/prepare_data.py"), "--tokenizer", str(tokenizer.saved_dir),
           "--mono", f"zh={f}", "--out", str(tmp_path / "out"), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == {str(f): {"invalid_utf8": 1}} and summary["totals"]["mono"]["zh"]["samples"] == 2
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr
