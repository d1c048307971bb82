"""ZeRO with fp32 model weights keeps one fp32 copy of each rank's partition, not two."""

from __future__ import annotations

import torch.distributed as dist

# What share_fp32_master reads, per ZeRO optimizer class of DeepSpeed 0.19: (master partitions, model partitions).
_EXPECTED = {"DeepSpeedZeroOptimizer_Stage3": ("fp32_partitioned_groups_flat", "fp16_partitioned_groups_flat"),
             "DeepSpeedZeroOptimizer": ("single_partition_of_fp32_groups", "parallel_partitioned_bit16_groups",
                                        "real_dp_process_group", "_link_all_hp_params")}


def _check_form(optimizer) -> str | None:
    """The optimizer's class name if it is a ZeRO optimizer this module knows; RuntimeError naming the DeepSpeed
    version if it is one whose attributes have changed; None for anything else."""
    name = type(optimizer).__name__
    if name not in _EXPECTED:
        return None
    missing = [a for a in _EXPECTED[name] if not hasattr(optimizer, a)]
    if missing:
        import deepspeed

        raise RuntimeError(f"DeepSpeed {deepspeed.__version__}: {name} has no {', '.join(missing)}; "
                           "swcm/training/fp32_master.py was written for DeepSpeed 0.19 and needs updating")
    return name


def share_fp32_master(optimizer) -> int:
    """Make a DeepSpeed ZeRO optimizer's fp32 master partitions the model's own partitions wherever those are
    already fp32 on the same device, freeing the copies; returns the bytes freed on this rank (0 for anything
    else: bf16/fp16 weights, CPU-offloaded or NVMe-swapped partitions, a non-ZeRO optimizer). Raises RuntimeError
    naming the DeepSpeed version when a ZeRO optimizer no longer has the attributes this reads.

    DeepSpeed 0.19 keeps a second copy: stage 1/2 clone the partition unconditionally, and stage 3 means not to,
    but its test compares a `torch.device` with a device-name string, which is never equal. That copy is half a
    model per rank at 2 ranks (0.7 GB for the CINO-base-v2 shape). Sharing it changes no arithmetic: the
    optimizer updates the partition in place, and DeepSpeed's copy of master into partition after each step
    (and after loading a checkpoint) becomes a copy onto itself.
    """
    kind = _check_form(optimizer)
    if kind == "DeepSpeedZeroOptimizer_Stage3":
        pairs = zip(optimizer.fp32_partitioned_groups_flat, optimizer.fp16_partitioned_groups_flat)
    elif kind == "DeepSpeedZeroOptimizer":  # stages 1 and 2
        own = [groups[dist.get_rank(group=optimizer.real_dp_process_group[i])]
               for i, groups in enumerate(optimizer.parallel_partitioned_bit16_groups)]
        pairs = zip(optimizer.single_partition_of_fp32_groups, own)
    else:
        return 0
    freed = 0
    for master, partition in pairs:
        if (partition is None or master.numel() == 0 or master.dtype != partition.dtype
                or master.device != partition.device or master.shape != partition.shape
                or master.data_ptr() == partition.data_ptr()):
            continue
        master.data = partition.data
        freed += master.numel() * master.element_size()
    if freed and kind == "DeepSpeedZeroOptimizer":
        # Each parameter's view into the fp32 master (its `_hp_mapping`, through which DeepSpeed loads universal
        # checkpoints and serves safe_get_full_fp32_param) still points into the freed copy: point it at the new one.
        optimizer._link_all_hp_params()
    return freed
