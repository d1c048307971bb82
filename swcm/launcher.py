"""A launcher for jobs that get preempted: `python -m swcm.launcher` (or `swcm-launch`) takes the DeepSpeed
launcher's arguments and the same training command line, and behaves as schedulers expect.

    swcm-launch --num_gpus 8 launch/pretrain.py --config ... --deepspeed_config ... --out RUN
    swcm-launch --hostfile H --node_rank $NODE --master_addr $MASTER --master_port 29500 launch/pretrain.py ...

Why not `deepspeed` for this: on one node its runner (the process the user or scheduler starts) installs no signal
handler, so a SIGTERM or Ctrl-C to the job's process group ends it at once (-15) while its ranks are still saving;
its per-node launcher forwards the signal, SIGKILLs ranks still running 30 s later, and exits 1 even when every
rank saved and exited 0 (under `srun --kill-on-bad-exit=1` that exit makes SLURM kill the other nodes mid-save).

This launcher starts its node's ranks (`python -u SCRIPT --local_rank=N ARGS`, with RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_SIZE, MASTER_ADDR, MASTER_PORT as DeepSpeed sets them), each set to die if the launcher dies, and then:
- SIGTERM / SIGINT, to it alone or to the whole process group: passed once to every rank (each finishes its step,
  saves and exits 0), then it waits for them, as long as they take (the scheduler's grace period bounds that); a
  second SIGINT (Ctrl-C twice) kills the ranks at once;
- a rank that fails: the other ranks get SIGTERM, and SIGKILL `--kill-after` seconds later; the exit code is the
  failed rank's;
- it exits 0 only when every rank exited 0, after every rank has exited (loader workers die with their rank) and
  DeepSpeed's /dev/shm buffers of its ranks are removed.
It never uses ssh: start one launcher per node (SLURM, Kubernetes, or by hand).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

log = logging.getLogger("swcm.launcher")

_PR_SET_PDEATHSIG = 1   # linux/prctl.h


def _die_with_parent() -> None:
    """In a rank, before exec: SIGKILL when the launcher dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="swcm-launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_gpus", "--num_accelerators", type=int, default=None,
                   help="ranks on this node (default: the CUDA devices, or 1 without CUDA)")
    p.add_argument("--hostfile", default=None, help="DeepSpeed hostfile: one 'host slots=N' line per node")
    p.add_argument("--node_rank", type=int, default=0, help="this node's line in the hostfile")
    p.add_argument("--master_addr", default="127.0.0.1")
    p.add_argument("--master_port", type=int, default=29500)
    p.add_argument("--no_ssh", action="store_true", help="accepted for DeepSpeed compatibility (never uses ssh)")
    p.add_argument("--kill-after", type=float, default=10.0,
                   help="seconds the other ranks get to exit after one rank failed, before SIGKILL")
    p.add_argument("script")
    p.add_argument("script_args", nargs=argparse.REMAINDER)
    return p.parse_args(argv)


def node_layout(args) -> tuple[int, int, int]:
    """(first global rank on this node, ranks on this node, world size) from the hostfile or --num_gpus."""
    if args.hostfile is None:
        local = args.num_gpus or _default_ranks()
        return 0, local, local
    slots = []
    for line in Path(args.hostfile).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            slots.append(int(fields.get("slots", 1)))
    if not 0 <= args.node_rank < len(slots):
        raise ValueError(f"--node_rank {args.node_rank}: {args.hostfile} lists {len(slots)} node(s)")
    local = args.num_gpus or slots[args.node_rank]
    return sum(slots[:args.node_rank]), local, sum(slots)


def _default_ranks() -> int:
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


class Launcher:
    """Starts this node's ranks and sees them through signals and failures (see the module docstring)."""

    def __init__(self, args):
        self.args = args
        self.first, self.local, self.world = node_layout(args)
        self.ranks: list[subprocess.Popen] = []
        self.signalled = 0      # SIGINTs received (the second kills)
        self.failed: int | None = None
        self.failed_at = 0.0

    def _env(self, local_rank: int) -> dict:
        return dict(os.environ, RANK=str(self.first + local_rank), LOCAL_RANK=str(local_rank),
                    WORLD_SIZE=str(self.world), LOCAL_SIZE=str(self.local), MASTER_ADDR=self.args.master_addr,
                    MASTER_PORT=str(self.args.master_port), CROSS_RANK=str(self.args.node_rank))

    def start(self) -> None:
        for local_rank in range(self.local):
            cmd = [sys.executable, "-u", self.args.script, f"--local_rank={local_rank}", *self.args.script_args]
            self.ranks.append(subprocess.Popen(cmd, env=self._env(local_rank), preexec_fn=_die_with_parent))

    def _signal(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self.signalled += 1
        if signum == signal.SIGINT and self.signalled > 1:
            log.warning("second interrupt: killing the ranks")
            self._kill_all()
            return
        log.warning("received %s: passing it to the ranks, which save and exit", signal.Signals(signum).name)
        for p in self.ranks:
            if p.poll() is None:
                p.send_signal(signum)

    def _kill_all(self) -> None:
        for p in self.ranks:
            for proc in _tree(p.pid):
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass

    def wait(self) -> int:
        """Wait for every rank; returns the exit code (0 only when every rank exited 0)."""
        while any(p.poll() is None for p in self.ranks):
            bad = next((p for p in self.ranks if p.poll() not in (None, 0)), None)
            if bad is not None and self.failed is None:
                self.failed, self.failed_at = bad.returncode, time.monotonic()
                log.error("rank %d exited with %d: stopping the other ranks", self.first + self.ranks.index(bad),
                          bad.returncode)
                for p in self.ranks:
                    if p.poll() is None:
                        p.terminate()
            if self.failed is not None and time.monotonic() - self.failed_at > self.args.kill_after:
                self._kill_all()
            time.sleep(0.1)
        codes = [p.returncode for p in self.ranks]
        first_bad = self.failed if self.failed is not None else next((c for c in codes if c != 0), 0)
        return 128 - first_bad if first_bad < 0 else first_bad

    def cleanup(self) -> None:
        """Remove the DeepSpeed /dev/shm buffers of this node's ranks (a rank killed before its process group was up
        cannot)."""
        from swcm.training.shm import release_shm_buffers

        for local_rank in range(self.local):
            release_shm_buffers(self.args.master_addr, str(self.args.master_port), self.first + local_rank)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return []


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [launcher] %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        launcher = Launcher(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, launcher._signal)
    launcher.start()
    code = launcher.wait()
    launcher.cleanup()
    log.info("all %d rank(s) exited; exit code %d", len(launcher.ranks), code)
    return code


if __name__ == "__main__":
    sys.exit(main())
