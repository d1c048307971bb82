"""swcm.atomic_write: a file is replaced whole or not at all, and gets a new file's usual permissions."""

import os
import stat

import pytest

from swcm.atomic_write import write_atomic, write_bytes_atomic


def test_replaces_whole_with_the_umask_permissions(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text("old")
    old_umask = os.umask(0o022)
    try:
        write_atomic(path, "néw ༄")
    finally:
        os.umask(old_umask)
    assert path.read_text(encoding="utf-8") == "néw ༄"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644   # as open() gives it; mkstemp's 0600 would hide it from others
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "index.json"
    path.write_bytes(b"old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]
