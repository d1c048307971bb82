#!/usr/bin/env python
"""Pretrain an SWCM model with DeepSpeed on streamed DAE + MT shards.

    deepspeed --num_gpus 2 launch/pretrain.py --config configs/demo.json \
        --deepspeed_config ds_configs/zero2.json --out runs/demo [--max-steps N] [--resume] [--set key=value ...]

The same command runs on GPU nodes and on a CPU-only machine (DeepSpeed's CPU accelerator, gloo). SIGTERM or
SIGINT makes every rank finish its step, save a checkpoint and exit 0; `--resume` continues from the newest
complete checkpoint in --out.
"""

import argparse
import logging
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run config JSON (configs/demo.json, configs/xlm-swcm-base.json)")
    p.add_argument("--deepspeed_config", required=True, help="DeepSpeed JSON (ds_configs/zero{0,1,2,3}.json, ...)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, tensorboard/, metrics.jsonl, config.json")
    p.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.alpha=0.5 (repeatable)")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # passed by the launcher
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s")
    from swcm.config import ConfigError, load_config
    from swcm.data.shards import DataError
    from swcm.training.trainer import Pretrainer

    try:
        cfg = load_config(args.config, args.overrides)
        if args.max_steps is not None:
            cfg.train.max_steps = args.max_steps
        trainer = Pretrainer(cfg, args.deepspeed_config, args.out, resume=args.resume)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return trainer.run()


if __name__ == "__main__":
    sys.exit(main())
