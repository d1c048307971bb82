"""The places that reach into DeepSpeed's internals fail loudly, naming the DeepSpeed version, when what they
touch has changed form, instead of silently doing nothing."""

import deepspeed
import pytest

from swcm.training import fp32_master, gloo_collectives


def test_fp32_master_names_the_version_when_zero_optimizer_attributes_are_gone():
    renamed = type("DeepSpeedZeroOptimizer", (), {"single_partition_of_fp32_groups": []})()
    with pytest.raises(RuntimeError, match=f"DeepSpeed {deepspeed.__version__}.*parallel_partitioned_bit16_groups"):
        fp32_master.share_fp32_master(renamed)
    assert fp32_master.share_fp32_master(object()) == 0   # not a ZeRO optimizer: nothing to share


def test_gloo_collectives_name_the_version_when_the_backend_changed(monkeypatch):
    from deepspeed.comm import comm as ds_comm

    monkeypatch.setattr(ds_comm, "cdb", type("TorchBackend", (), {})())
    monkeypatch.setattr(gloo_collectives.dist, "get_backend", lambda: "gloo")
    with pytest.raises(RuntimeError, match=f"DeepSpeed {deepspeed.__version__}.*all_gather_function"):
        gloo_collectives.use_bounded_gloo_collectives()
    monkeypatch.setattr(gloo_collectives.dist, "get_backend", lambda: "nccl")
    assert gloo_collectives.use_bounded_gloo_collectives() is False   # NCCL keeps its own collectives
