"""swcm/data/shard_tar.py against the reference it replaces: webdataset's TarWriter (Python's tarfile, USTAR,
mtime 0) must write the same bytes for the same samples, and tarfile must read every member back."""

import io
import random
import tarfile

import pytest
import webdataset as wds

from swcm.data.shard_tar import NAME_BYTES, ShardTar


def _samples(seed: int, n: int):
    rng = random.Random(seed)
    # sizes around the block edges (0, 511, 512, 513, ...), and names up to the longest a ustar name holds
    sizes = [0, 1, 511, 512, 513, 1024, 10_240, 10_241] + [rng.randrange(0, 5000) for _ in range(n)]
    for i, size in enumerate(sizes):
        key = f"{i:08d}" if i % 5 else "k" * (NAME_BYTES - len(".meta.json"))
        yield {"__key__": key, "meta.json": rng.randbytes(rng.randrange(0, 300)), "ids.i32": rng.randbytes(size)}


@pytest.mark.parametrize("n", [0, 3, 40])
def test_the_same_bytes_as_webdataset_and_tarfile_reads_them(tmp_path, n):
    ref, ours = tmp_path / "ref.tar", tmp_path / "ours.tar"
    w = wds.TarWriter(str(ref), mtime=0, format=tarfile.USTAR_FORMAT)
    t = ShardTar(ours)
    expected = []
    for sample in _samples(n, n):
        w.write(sample)
        for ext in sorted(k for k in sample if k != "__key__"):
            t.add(f"{sample['__key__']}.{ext}", sample[ext])
            expected.append((f"{sample['__key__']}.{ext}", sample[ext]))
    w.close()
    t.close()
    assert ours.read_bytes() == ref.read_bytes()
    with tarfile.open(ours) as tar:
        got = [(m.name, tar.extractfile(m).read()) for m in tar]
    assert got == expected


def test_an_empty_archive_is_what_tarfile_writes(tmp_path):
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT).close()
    t = ShardTar(tmp_path / "empty.tar")
    t.close()
    assert (tmp_path / "empty.tar").read_bytes() == buf.getvalue()


def test_a_name_longer_than_ustar_holds_is_refused(tmp_path):
    t = ShardTar(tmp_path / "x.tar")
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        t.add("n" * (NAME_BYTES + 1), b"")
    t.close()
