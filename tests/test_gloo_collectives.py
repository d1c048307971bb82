"""Bounded-memory gloo collectives (swcm/training/gloo_collectives.py) give exactly what torch's own
all_gather_into_tensor and reduce_scatter_tensor give, on 2 gloo ranks, for sizes that leave a partial last
piece, one piece, and tensors under the threshold (passed through), in fp32 and bf16."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from swcm.training import gloo_collectives as gc

pytestmark = pytest.mark.distributed   # two processes

WORLD = 2
PIECE = 64  # bytes: a few elements per piece, so that small tensors take many pieces
SIZES = [1, 7, 8, 97, 1000]  # elements per rank: below, at and above a piece, with a remainder


def _data(rank, n, dtype, salt):
    g = torch.Generator().manual_seed(1000 * salt + 10 * rank + n)
    return torch.randn(n, generator=g).to(dtype)


def _worker(rank, store_path):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    try:
        for dtype in (torch.float32, torch.bfloat16):
            for n in SIZES:
                shard = _data(rank, n, dtype, salt=1)
                expected = torch.empty(n * WORLD, dtype=dtype)
                dist.all_gather_into_tensor(expected, shard)
                got = torch.full_like(expected, float("nan"))
                handle = gc.all_gather_into_tensor(got, shard, async_op=True, piece_bytes=PIECE)
                handle.wait()
                assert torch.equal(got, expected), ("all_gather", dtype, n)

                for op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX):
                    full = _data(rank, n * WORLD, dtype, salt=2)
                    before = full.clone()
                    expected = torch.empty(n, dtype=dtype)
                    dist.reduce_scatter_tensor(expected, full.clone(), op=op)
                    got = torch.full_like(expected, float("nan"))
                    assert gc.reduce_scatter_tensor(got, full, op=op, piece_bytes=PIECE) is None
                    assert torch.equal(got, expected), ("reduce_scatter", dtype, n, op)
                    assert torch.equal(full, before), "the input must not be modified"
    finally:
        dist.destroy_process_group()


def test_pieced_collectives_equal_torch_collectives(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"),), nprocs=WORLD, join=True)
