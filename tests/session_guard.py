"""A pytest plugin (loaded by tests/conftest.py): the test session leaves the machine as it found it.

/dev/shm is RAM; a test that leaves DeepSpeed's ~70 MB all-reduce buffers there, or a process running, costs every
later session. At the end of the session, what it left is reported as an error and the session fails; its processes
are killed and DeepSpeed's buffers removed (other /dev/shm files are only reported). The machine may be shared, so
a new /dev/shm entry counts only when no live process maps it (a concurrent job's buffers are mapped by its ranks);
a concurrent session's leak can still be reported here. Child processes get LEFT_WITHIN_S seconds to end.
"""

import os
import sys
import time

import psutil
import pytest

SHM = "/dev/shm"
LEFT_WITHIN_S = 10
DEEPSPEED_BUFFER = "deepspeed_allreduce_buffer_"


def _shm_entries() -> set[str]:
    return set(os.listdir(SHM)) if os.path.isdir(SHM) else set()


def _mapped_shm() -> set[str]:
    """Names of the /dev/shm entries that some live process has mapped."""
    names = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as f:
                names.update(line.split(f"{SHM}/", 1)[1].split()[0] for line in f if f"{SHM}/" in line)
        except OSError:   # gone, or not ours to read
            pass
    return names


_SEEN: set[str] = set()
_FIRST_SEEN_AFTER: dict[str, str] = {}   # /dev/shm name -> the test that had just ended when it was first seen


def _worker(config) -> bool:
    """A pytest-xdist worker: the controller, which outlives every worker, does the checking."""
    return hasattr(config, "workerinput")


def pytest_sessionstart(session):
    session.config._shm_before = _shm_entries()
    _SEEN.update(session.config._shm_before)


def pytest_runtest_logfinish(nodeid, location):
    """Note the test that had just ended when each new /dev/shm entry was first seen: a leak names a suspect."""
    new = _shm_entries() - _SEEN
    _SEEN.update(new)
    _FIRST_SEEN_AFTER.update(dict.fromkeys(new, nodeid))


@pytest.hookimpl(trylast=True)   # after pytest-xdist has ended its workers
def pytest_sessionfinish(session, exitstatus):
    if _worker(session.config):
        return

    def running():
        alive = []
        for p in psutil.Process().children(recursive=True):
            try:
                # multiprocessing's resource tracker serves this process until it exits, then ends by itself
                if p.status() != psutil.STATUS_ZOMBIE and "multiprocessing.resource_tracker" not in " ".join(
                        p.cmdline()):
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        return alive

    deadline = time.monotonic() + LEFT_WITHIN_S
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = running()
    problems = []
    for p in left:
        try:
            problems.append(f"process {p.pid} still running: {' '.join(p.cmdline())[:200]}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    gained = _shm_entries() - session.config._shm_before - _mapped_shm()
    for name in sorted(gained):
        origin = _FIRST_SEEN_AFTER.get(name)
        problems.append(f"{SHM}/{name} left behind" + (f" (first seen when {origin} ended)" if origin else ""))
        if name.startswith(DEEPSPEED_BUFFER):   # ~70 MB of RAM each, and nobody maps it: removed
            try:
                os.unlink(os.path.join(SHM, name))
            except OSError:
                pass
    if problems:
        print("\nerror: the test session did not leave the machine as it found it (processes killed, DeepSpeed "
              "buffers removed):\n  " + "\n  ".join(problems), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
