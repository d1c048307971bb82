"""A save that fails on one rank (a full disk): the rank counts itself the job's first failure before it removes
the half-written checkpoint directory, so that a rank still writing into that directory, which then fails on a
missing path, cannot claim the error line with that secondary cause (seen in `test_a_failed_save_...` under load)."""

import errno
from types import SimpleNamespace

import pytest

from swcm.output_guard import OutputError
from swcm.training import checkpointing, failure


class FullDiskEngine:
    def save_checkpoint(self, root, tag, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", f"{root}/{tag}/mp_rank_00_model_states.pt")


def test_the_failing_rank_claims_the_failure_before_it_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpointing, "dist", SimpleNamespace(get_rank=lambda: 0, get_world_size=lambda: 2,
                                                               barrier=lambda: None))
    monkeypatch.setattr(failure, "_claimed", None)
    claims = []
    monkeypatch.setattr(failure, "_first_to_fail", lambda: claims.append("store") or True)
    removed = []
    real_rmtree = checkpointing.shutil.rmtree
    monkeypatch.setattr(checkpointing.shutil, "rmtree",
                        lambda path, **kw: removed.append((path, list(claims))) or real_rmtree(path, **kw))
    with pytest.raises(OutputError, match="no space left on device"):
        checkpointing.save(FullDiskEngine(), tmp_path / "checkpoints", 12, loader_state={}, run_state={}, keep_last=2)
    assert removed == [(tmp_path / "checkpoints" / "step_00000012", ["store"])]   # claimed, then removed
    assert failure.claim_failure() is True and claims == ["store"]   # asked once: the exit path reuses the answer
