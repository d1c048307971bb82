"""prepare_data's inputs: one corpus in every format gives the same shard set; what the new formats can get wrong
is one clear error naming the file and record; the silent cases (zero-width lines, a BOM, an uncovered script, the
same file through a symlink) are counted, stripped, reported or refused; --out never swallows an input."""

import bz2
import gzip
import hashlib
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

from swcm.data.prepare import prepare
from swcm.data.shards import DataError, read_shard

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
TASKS = 2   # the same task count for every format: byte-identical shard sets are promised at equal task counts


def _shard_set(out: Path) -> dict[str, str]:
    """sha256 of every shard and of lengths.npz: what must be byte-identical."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
            if p.suffix in (".tar", ".npz")}


@pytest.fixture(scope="module")
def docs() -> list[str]:
    """80 Kazakh documents, an empty one and a long one: the corpus every format holds."""
    lines = (DEMO / "mono" / "kk.txt").read_text(encoding="utf-8").splitlines()[:80]
    return lines[:40] + [""] + lines[40:] + [" ".join(lines[:12])]


def _write_formats(docs: list[str], d: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard
    from datasets import Dataset

    d.mkdir()
    text = ("\n".join(docs) + "\n").encode()
    jsonl = "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(docs)).encode()
    paths = {"txt": d / "c.txt", "txt.xz": d / "c.txt.xz", "jsonl": d / "c.jsonl", "jsonl.gz": d / "c.jsonl.gz",
             "jsonl.zst": d / "c.jsonl.zst", "jsonl.bz2": d / "c.jsonl.bz2", "parquet": d / "c.parquet",
             "datasets": d / "ds", "dir": d / "parts", "glob": d / "parts" / "part-*.jsonl"}
    paths["txt"].write_bytes(text)
    paths["txt.xz"].write_bytes(lzma.compress(text))
    paths["jsonl"].write_bytes(jsonl)
    paths["jsonl.gz"].write_bytes(gzip.compress(jsonl))
    paths["jsonl.zst"].write_bytes(zstandard.ZstdCompressor().compress(jsonl))
    paths["jsonl.bz2"].write_bytes(bz2.compress(jsonl))
    # two row groups, so a reader that only read the first would lose documents
    pq.write_table(pa.table({"text": docs, "n": list(range(len(docs)))}), paths["parquet"], row_group_size=50)
    Dataset.from_dict({"text": docs}).save_to_disk(str(paths["datasets"]))
    paths["dir"].mkdir()
    rows = jsonl.splitlines(keepends=True)
    for i in range(0, len(rows), 30):   # three files, read in name order as one input
        (paths["dir"] / f"part-{i // 30}.jsonl").write_bytes(b"".join(rows[i:i + 30]))
    return paths


@pytest.fixture(scope="module")
def formats(docs, tokenizer, tmp_path_factory):
    """format -> (the shard set's hashes, its index), each prepared with TASKS tasks in this process."""
    d = tmp_path_factory.mktemp("formats")
    out = {}
    for name, path in _write_formats(docs, d / "in").items():
        target = d / f"out-{name.replace('.', '-')}"
        index = prepare(tokenizer.saved_dir, target, mono=[("kk", str(path))], max_len=128, samples_per_shard=16,
                        tasks=TASKS, show_progress=False)
        out[name] = (_shard_set(target), index)
    return out


def test_every_format_gives_a_byte_identical_shard_set(formats):
    reference, ref_index = formats["txt"]
    assert len(reference) > 3 and ref_index["inputs"][0]["split_lines"] >= 1   # several shards, split docs
    for name, (hashes, index) in formats.items():
        assert hashes == reference, name
        assert index["totals"] == ref_index["totals"], name
        assert list(index["inputs"][0]["skipped"].values()) == [{"empty": 1}], name


def test_samples_name_input_and_record_and_lead_back_to_the_text(formats, docs, tokenizer):
    """A sample's id is INPUT:RECORD[:PIECE]; decoding the unsplit ones gives back document RECORD."""
    from swcm.data.shards import sample_source

    _, index = formats["dir"]
    out = Path(index["inputs"][0]["files"][0]).parents[2] / "out-dir"
    seen = 0
    for name in index["shards"]:
        for s in read_shard(str(out / name)):
            k, record, *piece = s["meta"]["id"].split(":")
            assert k == "0"
            (file, line), = sample_source(index, s["meta"]["id"])
            assert json.loads(Path(file).read_text(encoding="utf-8").splitlines()[line - 1])["id"] == int(record) - 1
            if not piece:
                assert tokenizer.decode(s["ids"]).strip() == " ".join(docs[int(record) - 1].split())
                seen += 1
    rep = index["inputs"][0]
    assert seen == rep["used_lines"] - rep["split_lines"] > 0 and rep["used_lines"] == len(docs) - 1


def _bad(tmp: Path, case: str) -> tuple[str, str]:
    """(PATH given to --mono kk=..., what the one error line must say) for one kind of bad input."""
    if case == "jsonl_without_field":
        f = tmp / "a.jsonl"
        f.write_text('{"text": "Сәлем"}\n{"content": "Әлем"}\n', encoding="utf-8")
        return str(f), f"{f}:2: record has no field 'text'"
    if case == "jsonl_field_not_a_string":
        f = tmp / "a.jsonl"
        f.write_text('{"text": "Сәлем"}\n{"text": null}\n', encoding="utf-8")
        return str(f), f"{f}:2: field 'text' is null, expected a string"
    if case == "parquet_without_column":
        import pyarrow as pa
        import pyarrow.parquet as pq

        f = tmp / "a.parquet"
        pq.write_table(pa.table({"content": ["Сәлем"]}), f)
        return str(f), f"{f}: no column 'text' (columns: content)"
    if case == "corrupt_gz":
        f = tmp / "a.jsonl.gz"
        blob = gzip.compress(b'{"text": "x"}\n' * 5000)
        f.write_bytes(blob[: len(blob) // 2] + b"\0" * 64 + blob[len(blob) // 2 + 64:])
        return str(f), f"{f}: corrupt gz data after line"
    if case == "truncated_zst":
        import zstandard

        f = tmp / "a.txt.zst"
        f.write_bytes(zstandard.ZstdCompressor().compress("Сәлем\n".encode() * 3000)[:-20])
        return str(f), f"{f}: corrupt zst data after line"
    if case == "glob_matches_nothing":
        return str(tmp / "nothing-*.jsonl"), f"{tmp / 'nothing-*.jsonl'}: no input file matches this pattern"
    assert case == "empty_gz"
    f = tmp / "e.txt.gz"
    f.write_bytes(gzip.compress(b""))
    return str(f), f"{f}: input file is empty"


BAD = ["jsonl_without_field", "jsonl_field_not_a_string", "parquet_without_column", "corrupt_gz", "truncated_zst",
       "glob_matches_nothing", "empty_gz"]


@pytest.mark.parametrize("case", BAD)
def test_bad_new_input_is_one_error_naming_file_and_record(tokenizer, tmp_path, case):
    path, expect = _bad(tmp_path, case)
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        prepare(tokenizer.saved_dir, out, mono=[("kk", path)], show_progress=False, tasks=2)
    assert expect in str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".out.*")), "debris beside --out"


@pytest.mark.slow
def test_cli_error_line_for_a_corrupt_gz(tokenizer, tmp_path):
    path, expect = _bad(tmp_path, "corrupt_gz")
    done = subprocess.run([sys.executable, str(ROOT / "launch/prepare_data.py"), "--tokenizer",
                           str(tokenizer.saved_dir), "--mono", f"kk={path}", "--out", str(tmp_path / "out"), "--quiet", "--workers", "1"],
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert expect in errors[0]


# -- the silent cases of issue 20 -----------------------------------------------------------------------------------

def test_bom_zero_width_and_unk_share(tokenizer, tmp_path):
    kk = (DEMO / "mono" / "kk.txt").read_text(encoding="utf-8").splitlines()[:20]
    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text("\n".join(kk) + "\n", encoding="utf-8")
    bom.write_bytes(b"\xef\xbb\xbf" + ("\n".join(kk) + "\n\u200b\u200d\n \u2060 \n").encode())
    # traditional Mongolian script: the demo tokenizer (trained on Cyrillic mn) has none of it
    mn = tmp_path / "mn.txt"
    mn.write_text("ᠮᠣᠩᠭᠣᠯ ᠬᠡᠯᠡ ᠪᠢᠴᠢᠭ\nᠰᠠᠢᠨ ᠪᠠᠢᠨ᠎ᠠ ᠤᠤ\n", encoding="utf-8")
    a = prepare(tokenizer.saved_dir, tmp_path / "a", mono=[("kk", str(plain))], show_progress=False)
    b = prepare(tokenizer.saved_dir, tmp_path / "b", mono=[("kk", str(bom)), ("mn", str(mn))], show_progress=False)
    assert b["inputs"][0]["skipped"] == {str(bom): {"zero_width_only": 2}}
    kk_shards = [{k: v for k, v in _shard_set(tmp_path / x).items() if k.startswith("mono-kk")} for x in "ab"]
    assert kk_shards[0] == kk_shards[1] and kk_shards[0]
    first = read_shard(str(tmp_path / "b" / sorted(b["streams"]["mono/kk"]["shards"])[0]))[0]
    assert first["ids"].tolist() == tokenizer(kk[0], add_special_tokens=False)["input_ids"]   # no BOM token
    # every mn word is "▁" + <unk>: half the tokens; Kazakh, which the tokenizer was trained on, has next to none
    assert a["unk"]["kk"]["share"] < 0.01 and b["unk"]["mn"]["share"] >= 0.4
    assert b["unk"]["mn"]["unk"] <= b["unk"]["mn"]["tokens"]


def test_unk_warning_names_the_language(tokenizer, tmp_path, caplog):
    mn = tmp_path / "mn.txt"
    mn.write_text("ᠮᠣᠩᠭᠣᠯ ᠬᠡᠯᠡ ᠪᠢᠴᠢᠭ\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="swcm.data.prepare_merge"):
        prepare(tokenizer.saved_dir, tmp_path / "out", mono=[("mn", str(mn))], show_progress=False)
    assert any(r.levelname == "WARNING" and r.getMessage().startswith("mn: ") and "<unk>" in r.getMessage()
               for r in caplog.records)


def test_same_file_through_a_symlink_or_directory_is_refused(tokenizer, tmp_path):
    f = tmp_path / "d" / "kk.txt"
    f.parent.mkdir()
    f.write_text("Сәлем\n", encoding="utf-8")
    (tmp_path / "link.txt").symlink_to(f)
    for second in (str(tmp_path / "link.txt"), str(f.parent), str(tmp_path / "d" / ".." / "d" / "kk.txt")):
        with pytest.raises(DataError, match="given more than once"):
            prepare(tokenizer.saved_dir, tmp_path / "out", mono=[("kk", str(f)), ("kk", second)], show_progress=False)


# -- the output rule (swcm.output_guard) ----------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["tokenizer_dir", "input_folder", "inside_input_folder", "foreign_dir"])
def test_out_that_would_swallow_an_input_is_refused(tokenizer, tmp_path, where):
    import shutil

    tok = tmp_path / "tok"
    shutil.copytree(tokenizer.saved_dir, tok)
    data = tmp_path / "data"
    data.mkdir()
    (data / "kk.txt").write_text("Сәлем\nӘлем\n", encoding="utf-8")
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "notes.md").write_text("mine")
    out = {"tokenizer_dir": tok, "input_folder": data, "inside_input_folder": data / "shards",
           "foreign_dir": foreign}[where]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(DataError) as e:
        # a directory given as the input: --out inside it would be read as input by the next run
        given = str(data) if where == "inside_input_folder" else str(data / "kk.txt")
        prepare(tok, out, mono=[("kk", given)], overwrite=True, show_progress=False)
    assert f"--out {out}" in str(e.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (data / "shards").exists()
