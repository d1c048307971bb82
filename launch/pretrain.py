#!/usr/bin/env python
"""Pretrain an SWCM model with DeepSpeed on streamed DAE + MT shards.

    deepspeed --num_gpus 2 launch/pretrain.py --config configs/demo.json \
        --deepspeed_config ds_configs/zero2.json --out runs/demo [--max-steps N] [--resume] [--set key=value ...]

The same command runs on GPU nodes and on a CPU-only machine (DeepSpeed's CPU accelerator, gloo). SIGTERM or
SIGINT makes every rank finish its step, save a checkpoint and exit 0; `--resume` continues from the newest
complete checkpoint in --out. Without a launcher (`python launch/pretrain.py ...`) it runs as one process.
One job at a time writes a run directory: a second one on the same --out fails at once, naming the first.
"""

import sys


def main(argv=None) -> int:
    from swcm.config import RunConfig
    from swcm.training.entry import run
    from swcm.training.pretrain_task import PretrainTask

    return run(__doc__, "run config JSON (configs/demo.json, configs/xlm-swcm-base.json)", RunConfig,
               lambda cfg, out: PretrainTask(cfg), argv)


if __name__ == "__main__":
    from swcm.fast_exit import skip_final_gc

    skip_final_gc()
    sys.exit(main())
