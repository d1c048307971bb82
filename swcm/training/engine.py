"""The DeepSpeed layer: process group, optimizer, lr schedule and `deepspeed.initialize` over a plain model."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from swcm.training.ds_ops import load_shm_comm_op
from swcm.training.fp32_master import share_fp32_master
from swcm.training.gloo_collectives import use_bounded_gloo_collectives
from swcm.training.schedule import warmup_linear_decay
from swcm.training.shm import release_shm_buffers
from swcm.training.threads import share_cores_between_ranks

log = logging.getLogger(__name__)


def init_process_group(gloo_piece_mb: float) -> tuple[int, int]:
    """Start DeepSpeed's process group (gloo on CPU ranks, NCCL on GPUs), CPU ranks sharing the host's cores unless
    OMP_NUM_THREADS says otherwise (swcm/training/threads.py); on gloo, route large all-gathers and
    reduce-scatters through bounded pieces of `gloo_piece_mb` MiB (0 = off). Returns (rank, world size)."""
    import deepspeed

    load_shm_comm_op()
    threads = share_cores_between_ranks()
    deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    # Every rank maps every rank's /dev/shm all-reduce buffer inside init_distributed and never opens one by name
    # again: once all are past it, the names can go, and a rank killed later (SIGKILL, OOM) leaves nothing in RAM.
    dist.barrier()
    release_shm_buffers(rank=rank)
    if threads is not None and rank == 0:
        log.info("OMP_NUM_THREADS unset: %d torch thread(s) per rank (this host's cores shared by its ranks)", threads)
    piece_bytes = int(gloo_piece_mb * 2 ** 20)
    if piece_bytes and use_bounded_gloo_collectives(piece_bytes) and rank == 0:
        log.info("gloo: all-gathers and reduce-scatters above %.4g MiB run in pieces of that size (bounded memory)",
                 gloo_piece_mb)
    return rank, world


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and LayerNorm weights (BERT/XLM-R practice). A parameter's shape is
    its full shape also when ZeRO-3 has already partitioned it (`ds_shape`; the local tensor is then 1-D)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))
        (no_decay if ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model, train_cfg, ds_config: dict, total_steps: int):
    """(engine, lr scheduler) for `model` in train mode: AdamW (fused: one kernel per step, no foreach temporaries,
    which set every ZeRO stage's peak memory) under the ZeRO stage of `ds_config`, with the warmup/decay schedule
    over `total_steps`."""
    import deepspeed

    optimizer = torch.optim.AdamW(param_groups(model, train_cfg.weight_decay), lr=train_cfg.lr,
                                  betas=train_cfg.betas, eps=train_cfg.eps, fused=True)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config,
        lr_scheduler=lambda opt: warmup_linear_decay(opt, total_steps, train_cfg.warmup_ratio))
    engine.train()  # from_pretrained returns the model in eval mode: no dropout, no activation checkpointing
    freed = share_fp32_master(engine.optimizer)
    if freed and dist.get_rank() == 0:
        log.info("fp32 weights: ZeRO's fp32 master partition is the model's own (%.2f GB per rank not copied)",
                 freed / 2 ** 30)
    return engine, scheduler
