"""swcm-launch (swcm/launcher.py) with stand-in rank scripts: signals reach every rank and the launcher exits 0
only after them; a failed rank ends the others (SIGKILL for one that ignores SIGTERM) and sets the exit code;
the hostfile gives the node layout DeepSpeed's launcher would."""

import os
import signal
import subprocess
import sys
import time
from argparse import Namespace

import psutil
import pytest

from swcm.launcher import node_layout

pytestmark = pytest.mark.distributed   # several processes

RANK = """
import os, signal, sys, time
rank, out = int(os.environ["RANK"]), sys.argv[-1]
open(f"{out}/env{rank}", "w").write(" ".join(os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"))
                                     + " " + sys.argv[1])
if os.environ.get("MODE") == "fail":
    if rank == 1:
        time.sleep(0.5)
        sys.exit(3)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a rank stuck in a collective, deaf to SIGTERM
    time.sleep(60)
def stop(signum, frame):
    time.sleep(1.0)                                 # "saving a checkpoint"
    open(f"{out}/saved{rank}", "w").write(signal.Signals(signum).name)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
time.sleep(60)
"""


def _start(tmp_path, mode="stop"):
    (tmp_path / "rank.py").write_text(RANK)
    env = dict(os.environ, MODE=mode)
    return subprocess.Popen([sys.executable, "-m", "swcm.launcher", "--num_gpus", "2", "--master_port", "29411",
                             "--kill-after", "2", str(tmp_path / "rank.py"), str(tmp_path)], env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(paths, timeout=30):
    deadline = time.time() + timeout
    while not all(p.exists() for p in paths):
        assert time.time() < deadline, paths
        time.sleep(0.05)


def _left(sid):
    return [p for p in psutil.process_iter() if _sid(p.pid) == sid]


def _sid(pid):
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


@pytest.mark.parametrize("how", ["group_term", "group_int", "launcher_term"])
def test_signals_reach_every_rank_and_the_launcher_exits_zero_after_them(tmp_path, how):
    proc = _start(tmp_path)
    _wait_for([tmp_path / "env0", tmp_path / "env1"])
    assert (tmp_path / "env1").read_text() == "1 1 2 29411 --local_rank=1"
    if how == "launcher_term":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM if how == "group_term" else signal.SIGINT)
    assert proc.wait(timeout=30) == 0, proc.stdout.read()
    assert all((tmp_path / f"saved{r}").exists() for r in (0, 1))   # both ranks finished before the launcher did
    assert _left(proc.pid) == []


def test_a_failed_rank_ends_the_job_with_its_exit_code(tmp_path):
    proc = _start(tmp_path, mode="fail")
    start = time.time()
    assert proc.wait(timeout=30) == 3
    assert time.time() - start < 10   # SIGTERM ignored: SIGKILL after --kill-after 2 s
    assert "rank 1 exited with 3" in proc.stdout.read()
    time.sleep(0.5)
    assert _left(proc.pid) == []


def test_hostfile_layout(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two nodes\nnode-a slots=4\nnode-b slots=2\n")
    assert node_layout(Namespace(hostfile=str(hostfile), node_rank=1, num_gpus=None)) == (4, 2, 6)
    assert node_layout(Namespace(hostfile=str(hostfile), node_rank=0, num_gpus=None)) == (0, 4, 6)
    assert node_layout(Namespace(hostfile=None, node_rank=0, num_gpus=3)) == (0, 3, 3)
    with pytest.raises(ValueError, match="lists 2 node"):
        node_layout(Namespace(hostfile=str(hostfile), node_rank=2, num_gpus=None))
