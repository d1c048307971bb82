"""Fault injection for the training tests, loaded by Python at start-up when this folder is on PYTHONPATH.

SWCM_TEST_FULL_DISK_AT=step_00000012: every `torch.save` into that checkpoint directory writes half its bytes and
then fails with ENOSPC, as a filesystem that fills up during a save does.
"""

import errno
import os

_TAG = os.environ.get("SWCM_TEST_FULL_DISK_AT")

if _TAG:
    import torch

    _save = torch.save

    def _full_disk_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and _TAG in os.fspath(f):
            with open(f, "wb") as out:
                out.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(f))
        return _save(obj, f, *args, **kwargs)

    torch.save = _full_disk_save
    torch.serialization.save = _full_disk_save
