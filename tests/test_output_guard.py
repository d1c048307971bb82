"""swcm.output_guard: an output never is, holds or lies inside an input, and --overwrite replaces only our own."""

import errno
import json
import os

import pytest

from swcm.output_guard import (MARKER, OutputError, check_output_dir, check_output_file, check_writable, is_ours,
                               mark_ours, os_error_line)


@pytest.fixture
def model(tmp_path):
    d = tmp_path / "project" / "encoder"
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "xlm-roberta"}')
    return d


@pytest.mark.parametrize("out", ["{m}", "{m}/..", "{m}/sub/out", "{m}/../encoder/.", "{m}/../.."])
def test_an_output_overlapping_an_input_is_refused_before_anything_is_read(model, out):
    out = out.format(m=model)
    with pytest.raises(OutputError, match=r"^--out .* (the input|contains the input|lies inside the input) "):
        check_output_dir(out, [model], overwrite=True)
    with pytest.raises(OutputError):
        check_output_file(out, [None, model], flag="--out")


def test_a_symlink_does_not_hide_the_input(model, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(model.parent)
    with pytest.raises(OutputError, match="contains the input"):
        check_output_dir(link, [model], overwrite=True)
    with pytest.raises(OutputError, match="lies inside the input"):
        check_output_dir(tmp_path / "out", [link / ".." / ".."], overwrite=True)
    data = tmp_path / "data.jsonl"
    data.write_text("{}\n")
    (tmp_path / "alias.jsonl").symlink_to(data)
    with pytest.raises(OutputError, match=r"^--scores-out .*alias.jsonl the input .*data.jsonl"):
        check_output_file(tmp_path / "alias.jsonl", [data], flag="--scores-out")


def test_a_sibling_with_a_common_prefix_is_not_inside(model):
    check_output_dir(model.parent / "encoder-swcm", [model], overwrite=False)   # "encoder" is a prefix, not a parent
    check_output_file(model.parent / "encoder.preds.jsonl", [model], flag="--out")


def test_absent_and_empty_directories_are_accepted(tmp_path):
    check_output_dir(tmp_path / "new" / "deeper", [], overwrite=False)
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", [], overwrite=False)


@pytest.mark.parametrize("names,accepted", [
    ((".lock",), True), ((".lock", MARKER), True), ((".lock", f".{MARKER}.4242.tmp"), True),
    ((".lock", f".{MARKER}.4242.tmp", "notes.txt"), False)], ids=["lock", "marker", "marker_being_written", "other"])
def test_a_run_directory_another_rank_is_starting_is_accepted(tmp_path, names, accepted):
    """What rank 0 writes first (its lock, then our marker through a temporary) while the other ranks check the
    directory too: a start-up race, not a foreign directory."""
    for name in names:
        (tmp_path / name).write_text("{}")
    if accepted:
        check_output_dir(tmp_path, [], overwrite=True)
    else:
        with pytest.raises(OutputError, match="was not written by swcm"):
            check_output_dir(tmp_path, [], overwrite=True)


def test_non_empty_needs_overwrite_and_a_foreign_directory_is_never_replaced(tmp_path):
    d = tmp_path / "thesis"
    d.mkdir()
    for name in ["a.tex", "b.tex", "c.tex", "d.tex", "e.tex", "f.tex"]:
        (d / name).write_text("x")
    with pytest.raises(OutputError, match=r"exists and is not empty \(pass --overwrite"):
        check_output_dir(d, [], overwrite=False)
    with pytest.raises(OutputError, match=r"not written by swcm \(it holds a.tex, b.tex, c.tex, d.tex, e.tex, "
                                          r"\.\.\. \(6 entries\)\)"):
        check_output_dir(d, [], overwrite=True)
    mark_ours(d, "model")
    check_output_dir(d, [], overwrite=True)


def test_a_file_where_a_directory_goes_and_the_reverse(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        check_output_dir(f, [], overwrite=True)
    with pytest.raises(OutputError, match="is a directory"):
        check_output_file(tmp_path, [], flag="--out")


def _write(d, name, obj):
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(obj))
    return d


def test_what_older_versions_wrote_is_recognised_and_look_alikes_are_not(tmp_path):
    assert is_ours(_write(tmp_path / "shards", "index.json", {"format": "swcm-shards", "version": 1})) == "shards"
    assert is_ours(_write(tmp_path / "ds", "index.json", {"format": "mds", "shards": []})) is None
    swcm_config = {"model_type": "xlm-roberta", "auto_map": {"AutoConfig": "modeling_swcm.SWCMConfig"}}
    assert is_ours(_write(tmp_path / "init", "config.json", swcm_config)) == "model"
    assert is_ours(_write(tmp_path / "xlmr", "config.json", {"model_type": "xlm-roberta"})) is None
    enc = _write(tmp_path / "mlm-export", "config.json", {"model_type": "xlm-roberta"})
    _write(enc, "training_config.json", {"run": {}, "task": "mlm", "deepspeed": {}})
    assert is_ours(enc) == "model"
    assert is_ours(_write(tmp_path / "run", "config.json", {"run": {}, "task": "seq2seq", "deepspeed": {}})) == "run"
    assert is_ours(_write(tmp_path / "uni", "swcm_universal.json", {"step": 3})) == "universal"
    assert is_ours(_write(tmp_path / "broken", "index.json", "not an object")) is None
    (tmp_path / "bad-utf8").mkdir()
    (tmp_path / "bad-utf8" / MARKER).write_bytes(b"\xff\xfe")
    assert is_ours(tmp_path / "bad-utf8") is None
    mark_ours(tmp_path / "bad-utf8", "run")
    assert is_ours(tmp_path / "bad-utf8") == "run"


def test_os_error_lines_name_the_path_and_a_full_disk(tmp_path):
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device", "/x/y")) == "/x/y: no space left on device"
    assert os_error_line(OSError(errno.EROFS, "Read-only file system"), "/ro") == "/ro: Read-only file system"


def test_check_writable_probes_and_cleans_up(tmp_path, monkeypatch):
    check_writable(tmp_path / "not" / "yet" / "there")
    check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=r"^--scores-out .*scores.json: no space left on device$"):
        check_writable(tmp_path / "scores.json", flag="--scores-out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_check_writable_names_a_read_only_location(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=r"^--out .*ro/model: Permission denied$"):
            check_writable(ro / "model")
    finally:
        ro.chmod(0o755)
