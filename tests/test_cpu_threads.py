"""CPU ranks share the host's cores (swcm/training/threads.py): each of N local ranks gets cores // N torch threads
unless OMP_NUM_THREADS is set, which then decides alone."""

import os

import pytest
import torch

from swcm.training.threads import share_cores_between_ranks


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU host keeps its settings")
@pytest.mark.parametrize("env_key", ["LOCAL_SIZE", "LOCAL_WORLD_SIZE"])
def test_ranks_get_an_equal_share_of_the_cores(restore_threads, env_key):
    cores = len(os.sched_getaffinity(0))
    for ranks in (1, 2, cores + 3):
        got = share_cores_between_ranks({env_key: str(ranks)})
        assert got == max(1, cores // ranks) == torch.get_num_threads()


def test_omp_num_threads_set_by_the_user_decides(restore_threads):
    torch.set_num_threads(1)
    assert share_cores_between_ranks({"OMP_NUM_THREADS": "7", "LOCAL_SIZE": "2"}) is None
    assert torch.get_num_threads() == 1
