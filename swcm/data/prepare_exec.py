"""datatrove executors for prepare: local processes, a SLURM job array (tasks, then a one-task merge job that
depends on them), or Ray when it is installed.

datatrove's task logger prints every failure with its traceback on stderr and re-adds a DEBUG-level stderr logger
after each task; our entry point's promise is one `error:` line. So each task logs to its file in the logging
directory at DEBUG, as datatrove does, and to stderr only at the level `set_coordinator_logging` chose, never with
a traceback (the file keeps it). The two datatrove functions that set this up are replaced when this module is
imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
from pathlib import Path

import datatrove.executor.base as dt_base
import psutil
from datatrove.executor.local import LocalPipelineExecutor
from datatrove.executor.slurm import SlurmPipelineExecutor
from datatrove.utils.logging import logger

from swcm.data.shards import DataError


def _stderr_format(record) -> str:
    return "{time:HH:mm:ss} {level} datatrove task: {message}\n"   # no {exception}: the task's log file has it


_stderr_level = "WARNING"   # what tasks print on stderr; set by the coordinator, inherited by forked workers


def _add_task_logger(logging_dir, rank: int, local_rank: int = 0, node_rank: int = -1):
    logger.remove()
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    logger.add(logfile, level="DEBUG", format="{time} | {level: <8} | {name}:{function}:{line} - {message}")
    logger.add(sys.stderr, level=_stderr_level if local_rank == 0 else "ERROR", format=_stderr_format,
               filter=lambda r: r["exception"] is None)
    logger.info(f"task {rank} starts")
    return logfile


def _close_task_logger(logfile) -> None:
    logger.complete()
    set_coordinator_logging(_stderr_level)
    logfile.close()


# Replaced when this module is imported: in the coordinator (and so in the workers it forks), and in a SLURM task,
# which imports it to unpickle its executor.
dt_base.add_task_logger = _add_task_logger
dt_base.close_task_logger = _close_task_logger


def set_coordinator_logging(stderr_level: str) -> None:
    """datatrove's messages outside tasks (tasks skipped, completed) and, from now on, the tasks' own: on stderr at
    `stderr_level`, no tracebacks."""
    global _stderr_level
    _stderr_level = stderr_level
    logger.remove()
    logger.add(sys.stderr, level=stderr_level, format=_stderr_format, filter=lambda r: r["exception"] is None)


_forking_for_prepare = False   # True while a LocalExecutor runs: the at-fork hook below acts only then


def _worker_signals() -> None:
    """In a process forked to run tasks (a pool worker, datatrove's manager): Ctrl-C is the coordinator's to
    handle (it ends the pool), and SIGTERM ends the process at once, as by default, instead of raising the
    coordinator's `Interrupted` (swcm/cli_exit.py) there (which would print a traceback per worker)."""
    if _forking_for_prepare:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_worker_signals)


class LocalExecutor(LocalPipelineExecutor):
    """`LocalPipelineExecutor` with our logging (see the module docstring), forking its workers: they start at
    once, with the tokenizer's modules already imported, and fork-context semaphores are unlinked at creation,
    so a pool ended by an error leaves none for `multiprocess`' exit-time clean-up to trip over (with
    forkserver it printed `FileNotFoundError` tracebacks after the `error:` line)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, start_method="fork", **kwargs)

    def run(self):
        global _forking_for_prepare
        _forking_for_prepare = True
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        try:
            return super().run()
        except BaseException:
            _end_children(before)
            raise
        finally:
            _forking_for_prepare = False


CHILDREN_GRACE_S = 5   # SIGTERM ends our forked children at once (see _worker_signals); this only bounds a stuck one


def _end_children(before: set[int]) -> None:
    """End the processes this run forked (pool workers, datatrove's manager: children not in `before`) when it
    fails or is interrupted at any point, also while the pool or the manager is still starting: a child left
    behind would keep running and hold the parent's stdout and stderr open."""
    children = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for p in children:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(children, timeout=CHILDREN_GRACE_S)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


class SlurmExecutor(SlurmPipelineExecutor):
    """`SlurmPipelineExecutor` whose tasks log at INFO (SLURM's log file per array index is where a user looks),
    with a task environment that does not call `scontrol` (each of our tasks runs on one node: this one)."""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        set_coordinator_logging("INFO")
        return super()._run_for_rank(rank, local_rank, node_rank)

    def get_distributed_env(self, node_rank: int = -1):
        return dt_base.DistributedEnvVars(
            datatrove_node_ips=os.environ.get("SLURMD_NODENAME", "localhost"),
            datatrove_cpus_per_task=str(self.cpus_per_task), datatrove_mem_per_cpu=str(self.mem_per_cpu_gb),
            datatrove_gpus_on_node="0", datatrove_executor="SLURM")


def local(pipeline: list, tasks: int, workers: int, logging_dir: Path) -> LocalExecutor:
    """Tasks over `workers` processes on this machine (in this process when `workers` is 1)."""
    return LocalExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logging_dir))


def slurm(pipeline: list, merge_pipeline: list, tasks: int, logging_dir: Path, logs: Path, options: dict
          ) -> tuple[SlurmExecutor, SlurmExecutor]:
    """A job array of `tasks` (one datatrove task per array index, at most `options["workers"]` at once) and a
    one-task merge job that starts when all of them have succeeded. `options`: partition, time, cpus_per_task,
    mem_per_cpu_gb, workers, job_name, sbatch_args. Submit with `.run()` of the merge executor (it submits the
    array first)."""
    common = {"partition": options["partition"], "time": options["time"], "venv_path": f"{sys.prefix}/bin/activate",
              "sbatch_args": options.get("sbatch_args") or {}, "qos": options.get("qos") or None}
    array = SlurmExecutor(pipeline, tasks=tasks, workers=options.get("workers") or -1,
                          cpus_per_task=options.get("cpus_per_task", 1),
                          mem_per_cpu_gb=options.get("mem_per_cpu_gb", 2), job_name=options.get("job_name", "swcm-prepare"), logging_dir=str(logging_dir),
                          slurm_logs_folder=str(logs / "slurm"), **common)
    merge = SlurmExecutor(merge_pipeline, tasks=1, cpus_per_task=1, mem_per_cpu_gb=options.get("mem_per_cpu_gb", 2),
                          job_name=f"{options.get('job_name', 'swcm-prepare')}-merge", logging_dir=str(logs / "merge"),
                          slurm_logs_folder=str(logs / "slurm"), depends=array, **common)
    return array, merge


def ray(pipeline: list, tasks: int, workers: int, logging_dir: Path):
    """Tasks on a Ray cluster (`ray` is an optional dependency: DataError naming the package if it is missing)."""
    if importlib.util.find_spec("ray") is None:
        raise DataError("--executor ray: the ray package is not installed (pip install 'ray[default]')")
    from datatrove.executor.ray import RayPipelineExecutor

    return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logging_dir))
