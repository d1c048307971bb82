"""A resumable runner for a graph of stages, each a few subprocesses (or a training script started as N ranks).

A stage is done once its marker `OUT/done/<stage>.json` exists; the marker is written only after every command of
the stage exited 0 and every output it promises exists, and never while the runner is stopping (a trainer stopped
by a signal saves a checkpoint and exits 0 without having finished). Started again, the runner skips done stages
and reruns the others from their start -- the training scripts with `--resume`, so they continue from their
newest complete checkpoint.

Stages run side by side while their ranks fit in `cores` (one rank or process per core, OMP_NUM_THREADS=1).
Training scripts are started the way `deepspeed --num_gpus N` starts them (RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_SIZE, MASTER_ADDR/PORT in the environment; the equivalent `deepspeed` command is logged), but as direct
children of the runner: every process it starts carries a parent-death signal, so however the runner ends --
SIGKILL included -- nothing it started outlives it and writes on. SIGTERM / SIGINT are passed on to the running
commands; the runner waits for them and exits non-zero. One runner per output directory (a lock file).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


@dataclass
class Command:
    argv: list[str]          # the program and its arguments (argv[0] a python script run by this interpreter)
    ranks: int = 0           # 0: one ordinary process; N: a DeepSpeed training script started as N ranks


@dataclass
class Stage:
    id: str                                  # also its log and done-marker name ('/' allowed)
    deps: list[str] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)   # must exist for the stage to count as done
    prepare: Callable[[], None] | None = None           # in-process work before the commands (cheap)

    @property
    def cores(self) -> int:
        return max([c.ranks or 1 for c in self.commands] or [1])


class StageFailed(RuntimeError):
    """A stage's command exited non-zero or left an output missing."""


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before by this process (stages started together get different ones)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class _Running:
    """A stage in progress: its current command's processes."""

    def __init__(self, stage: Stage, log_path: Path):
        self.stage, self.index, self.procs, self.start = stage, -1, [], time.monotonic()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "a", encoding="utf-8")

    def launch_next(self, env: dict, cwd: Path) -> bool:
        """Start the next command; False when there is none left."""
        self.index += 1
        if self.index >= len(self.stage.commands):
            return False
        cmd = self.stage.commands[self.index]
        argv = [sys.executable, *cmd.argv]
        if cmd.ranks:
            port = free_port()
            self.log.write(f"\n== {time.strftime('%F %T')} as `deepspeed --num_gpus {cmd.ranks} --master_port {port} "
                           f"{' '.join(cmd.argv)}` would start it\n")
        else:
            self.log.write(f"\n== {time.strftime('%F %T')} {' '.join(argv)}\n")
        self.log.flush()
        self.procs = []
        for rank in range(cmd.ranks or 1):
            proc_env = dict(env)
            if cmd.ranks:
                proc_env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(cmd.ranks),
                                LOCAL_SIZE=str(cmd.ranks), CROSS_RANK="0", CROSS_SIZE="1",
                                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            self.procs.append(subprocess.Popen(argv, cwd=cwd, env=proc_env, stdout=self.log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent))
        return True

    def poll(self) -> int | None:
        """None while a process of the current command runs; else the first non-zero exit code, or 0. A failed rank
        leaves the others nothing to wait for: they are ended."""
        codes = [p.poll() for p in self.procs]
        bad = next((c for c in codes if c not in (None, 0)), None)
        if bad is not None:
            self.terminate()
            for p in self.procs:
                p.wait()
            return bad
        return None if None in codes else 0

    def terminate(self) -> None:
        """SIGTERM to the command's processes still running (trainers save a checkpoint and exit)."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)


class Runner:
    """Runs `stages` (listed so that each comes after its dependencies) into `out`; `run()` returns the exit code."""

    def __init__(self, stages: list[Stage], out: Path, cwd: Path, cores: int):
        self.stages, self.out, self.cwd, self.cores = stages, Path(out), Path(cwd), cores
        ids = [s.id for s in stages]
        for s in stages:
            missing = [d for d in s.deps if d not in ids[:ids.index(s.id)]]
            if missing:
                raise ValueError(f"stage {s.id}: dependencies {missing} are not listed before it")
        self.stopping, self.signum = False, None

    # -- markers ----------------------------------------------------------------------------------------------
    def marker(self, stage_id: str) -> Path:
        return self.out / "done" / f"{stage_id.replace('/', '__')}.json"

    def is_done(self, stage_id: str) -> bool:
        return self.marker(stage_id).is_file()

    def _mark_done(self, run: _Running) -> None:
        missing = [str(p) for p in run.stage.outputs if not Path(p).exists()]
        if missing:
            raise StageFailed(f"stage {run.stage.id}: finished without {missing[0]}")
        path = self.marker(run.stage.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stage": run.stage.id, "seconds": round(time.monotonic() - run.start, 1),
                                   "finished": time.strftime("%F %T"),
                                   "commands": [c.argv for c in run.stage.commands]}, indent=1) + "\n")
        tmp.rename(path)

    # -- the loop ---------------------------------------------------------------------------------------------
    def _env(self) -> dict:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        env.setdefault("DS_ACCELERATOR", "cpu")
        return env

    def _on_signal(self, signum, _frame) -> None:
        if not self.stopping:
            log.warning("%s: stopping -- the running stages save and end; run the same command again to continue",
                        signal.Signals(signum).name)
        self.stopping, self.signum = True, signum
        for run in self.running.values():
            run.terminate()

    def run(self) -> int:
        """0 when every stage is done; 1 after a failed stage (no new stage starts, those in progress finish); 143 /
        130 when stopped by SIGTERM / SIGINT."""
        self.out.mkdir(parents=True, exist_ok=True)
        lock = open(self.out / ".lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"error: {self.out}: another ablate.py is running on it", file=sys.stderr)
            return 2
        self.running: dict[str, _Running] = {}
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._loop()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            lock.close()

    def _loop(self) -> int:
        env, total = self._env(), len(self.stages)
        pending = [s for s in self.stages if not self.is_done(s.id)]
        done_before = total - len(pending)
        if done_before:
            log.info("%d of %d stages already done; %d to run", done_before, total, len(pending))
        failure = None
        while pending or self.running:
            if not self.stopping and failure is None:
                failure = self._start_ready(pending, env)
            for sid, run in list(self.running.items()):
                code = run.poll()
                if code is None:
                    continue
                try:
                    if code != 0:
                        raise StageFailed(f"stage {sid}: exit status {code} (log: {run.log.name})")
                    if not self.stopping and run.launch_next(env, self.cwd):
                        continue
                    if not self.stopping:
                        self._mark_done(run)
                        n = sum(self.is_done(s.id) for s in self.stages)
                        log.info("[%d/%d] done %s (%.0f s)", n, total, sid, time.monotonic() - run.start)
                except StageFailed as e:   # the stages still running finish (a stopped trainer would not)
                    if failure is None and not self.stopping:
                        failure = e
                run.log.close()
                del self.running[sid]
            if self.stopping and not self.running:
                break
            if failure is not None and not self.running:
                break
            if not self.running and pending and not self._startable(pending):
                failure = StageFailed(f"stages {[s.id for s in pending][:3]} wait for stages that are not done")
                break
            time.sleep(0.1)
        if failure is not None:
            print(f"error: {failure}", file=sys.stderr)
            return 1
        if self.stopping:
            return 130 if self.signum == signal.SIGINT else 143
        return 0

    def _startable(self, pending: list[Stage]) -> list[Stage]:
        return [s for s in pending if all(self.is_done(d) for d in s.deps)]

    def _start_ready(self, pending: list[Stage], env: dict) -> StageFailed | None:
        """Start the pending stages whose dependencies are done while their cores fit; a failure of a stage's
        in-process part is returned."""
        busy = sum(r.stage.cores for r in self.running.values())
        for stage in self._startable(pending):
            if busy + stage.cores > self.cores:
                continue
            try:
                if stage.prepare is not None:
                    stage.prepare()
            except Exception as e:   # the in-process part (writing configs, the report) failed: name the stage
                return StageFailed(f"stage {stage.id}: {type(e).__name__}: {e}")
            run = _Running(stage, self.out / "logs" / f"{stage.id.replace('/', '__')}.log")
            pending.remove(stage)
            self.running[stage.id] = run
            busy += stage.cores
            log.info("start %s (%d core%s)", stage.id, stage.cores, "s" if stage.cores > 1 else "")
            run.launch_next(env, self.cwd)   # no command: a stage of in-process work only, done at the next poll
        return None
