"""Intra-op threads of a CPU rank: the ranks on a host share its cores, they do not each take all of them."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def share_cores_between_ranks(env=os.environ) -> int | None:
    """On a host without CUDA and without OMP_NUM_THREADS set, give each of the host's ranks (LOCAL_SIZE, as DeepSpeed's
    launchers set it, or torchrun's LOCAL_WORLD_SIZE) an equal share of this process's cores as torch intra-op
    threads, at least one; returns the number set, or None when the user's setting (or a GPU) decides.

    By default every rank would run one thread per core: N ranks on N cores then run N x N threads, and OpenMP's
    spinning barriers make each rank wait on threads preempted by the other ranks (or by any other load), which costs
    most exactly when the cores are shared. torchrun sets OMP_NUM_THREADS=1 for the same reason; the DeepSpeed
    launcher sets nothing."""
    if "OMP_NUM_THREADS" in env or torch.cuda.is_available():
        return None
    ranks = int(env.get("LOCAL_SIZE") or env.get("LOCAL_WORLD_SIZE") or 1)
    threads = max(1, len(os.sched_getaffinity(0)) // max(ranks, 1))
    torch.set_num_threads(threads)
    return threads
