"""Shard tar files written member by member, with the fixed metadata that makes them reproducible.

A member is a regular file in plain ustar: mode 0444, owner bigdata:bigdata (uid and gid 0), mtime 0, no PAX
header. These are the bytes Python's `tarfile` writes for such members (webdataset's `TarWriter(mtime=0)`, which
prepare used before), so every tar reader reads them and the same samples give the same shard, byte for byte.
They are built here directly: tarfile's per-member work in Python (a TarInfo copy, a PAX check, field encoding)
took more of prepare's time than the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

BLOCK = 512            # tar's unit: a header, and each member's data padded to a whole block
RECORD = 20 * BLOCK    # an archive ends on a whole record (tarfile's and GNU tar's default blocking factor)
NAME_BYTES = 100       # the ustar name field; longer names would need the prefix field, which shards never need

# The header's fields after name, mode, uid, gid, size, mtime and checksum: type "0" (regular file), no link name,
# the ustar magic and version, owner and group names, no device numbers, no prefix, padding to the block.
_MODE_UID_GID = b"0000444\0" + b"0000000\0" * 2
_MTIME = b"%011o\0" % 0
_AFTER_CHECKSUM = (b"0" + b"\0" * 100 + b"ustar\x0000" + b"bigdata".ljust(32, b"\0") * 2 + b"\0" * (8 + 8 + 155)
                   + b"\0" * 12)
# The checksum is the byte sum of the header with its own field read as 8 spaces: that part and the fields after it
# are the same in every header.
_FIXED_SUM = sum(b" " * 8) + sum(_AFTER_CHECKSUM)


def member_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a member `name` of `size` bytes; ValueError if the name does not fit."""
    encoded = name.encode("utf-8")
    if len(encoded) > NAME_BYTES:
        raise ValueError(f"tar member name longer than {NAME_BYTES} bytes: {name!r}")
    head = encoded.ljust(NAME_BYTES, b"\0") + _MODE_UID_GID + b"%011o\0" % size + _MTIME
    checksum = sum(head) + _FIXED_SUM
    return head + b"%06o\0 " % checksum + _AFTER_CHECKSUM


class ShardTar:
    """A tar file being written at `path`: `add` members, then `close` (which writes the end-of-archive blocks)."""

    def __init__(self, path: str | Path):
        self._file = open(path, "wb")
        self._offset = 0

    def add(self, name: str, data: bytes) -> None:
        """Append the member `name` holding `data`."""
        pad = -len(data) % BLOCK
        self._file.write(member_header(name, len(data)))
        self._file.write(data)
        if pad:
            self._file.write(b"\0" * pad)
        self._offset += BLOCK + len(data) + pad

    def close(self) -> None:
        """End the archive (two zero blocks, then zeros to a whole record) and close the file."""
        end = 2 * BLOCK
        end += -(self._offset + end) % RECORD
        self._file.write(b"\0" * end)
        self._file.close()
