"""The command line shared by the training entry points (launch/pretrain.py, launch/finetune.py, ...): arguments,
logging, one `error:` line for anything the user can fix (before any process group), then the trainer; a failure
after that ends the process at once with one `error:` line for the job (swcm/training/failure.py)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def parse_args(doc: str, config_help: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--deepspeed_config", required=True, help="DeepSpeed JSON (ds_configs/zero{0,1,2,3}.json, ...)")
    p.add_argument("--out", required=True,
                   help="run directory: checkpoints/, tensorboard/, metrics.jsonl, config.json, model/")
    p.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest intact checkpoint in --out (also at another world size or stage)")
    p.add_argument("--resume-from", default=None, metavar="DIR",
                   help="start from a universal checkpoint (convert_checkpoint.py universal) or another run's newest "
                        "checkpoint, at any world size and ZeRO stage 1-3")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=2e-4 (repeatable)")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # passed by the launcher
    return p.parse_args(argv)


# What a launcher (DeepSpeed's, torchrun, swcm-launch, mpirun, srun with several tasks) sets in each process.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def single_process_defaults(env=os.environ) -> bool:
    """Without a launcher, make this process a job of world size 1 (rank 0, a free local port), as `torchrun
    --nproc_per_node 1` would; DeepSpeed would otherwise go looking for MPI. Returns whether it did."""
    if any(v in env for v in LAUNCHER_VARIABLES) or int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return False
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(port))
    return True


def run(doc: str, config_help: str, config_cls, make_task, argv=None) -> int:
    """Parse `argv`, build the config (`config_cls`) and the trainer with `make_task(cfg, out_dir)`, train; returns the
    exit code (2 with one `error:` line for a bad config, file or option, before any process group starts). Without
    a launcher it runs as one process (world size 1)."""
    args = parse_args(doc, config_help, argv)
    alone = single_process_defaults()
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s")
    if alone:
        logging.getLogger(__name__).info("no launcher: running as one process (world size 1)")
    from swcm.cli_exit import print_error
    from swcm.config import ConfigError, load_config
    from swcm.data.shards import DataError
    from swcm.output_guard import OutputError
    from swcm.training.failure import exit_on_failure
    from swcm.training.shm import release_shm_buffers
    from swcm.training.trainer import Trainer

    try:
        overrides = args.overrides + ([f"train.max_steps={args.max_steps}"] if args.max_steps is not None else [])
        cfg = load_config(args.config, overrides, cls=config_cls)
        trainer = Trainer(cfg, args.deepspeed_config, args.out, task=make_task(cfg, args.out), resume=args.resume,
                          resume_from=args.resume_from)
    except (ConfigError, DataError, OutputError) as e:
        print_error(str(e))
        return 2
    try:
        return trainer.train()
    except BaseException as e:  # any failure after the checks: one error line for the job, exit at once
        exit_on_failure(e, Path(args.out), int(os.environ.get("RANK", "0")), cleanup=(release_shm_buffers,))
