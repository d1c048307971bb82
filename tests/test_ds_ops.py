"""DeepSpeed's CPU collective op: built in a folder of our own (the venv's `torch_extensions`) unless the user chose
one; there, a lock file left by a process killed while it loaded the op is removed (torch's own loader would wait
for ever); in a folder that is not ours the lock file is left to its owner, and the wait is said in one line."""

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOAD = "import logging; logging.basicConfig(); from swcm.training.ds_ops import load_shm_comm_op; load_shm_comm_op()"
OWN = Path(sys.prefix) / "torch_extensions"


def _env(**extra) -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", **extra)
    env.pop("TORCH_EXTENSIONS_DIR", None)
    env.update(extra)
    return env


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the own folder exists only inside a virtual environment")
def test_our_folder_is_the_venv_s_and_a_stale_lock_there_is_removed():
    res = subprocess.run([sys.executable, "-c", "import os, swcm; print(os.environ['TORCH_EXTENSIONS_DIR'])"],
                         env=_env(), capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == str(OWN), res.stderr
    res = subprocess.run([sys.executable, "-c", "import os, swcm; print(os.environ['TORCH_EXTENSIONS_DIR'])"],
                         env=_env(TORCH_EXTENSIONS_DIR="/elsewhere"), capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "/elsewhere", res.stderr

    build_dir = OWN / "deepspeed_shm_comm"   # built by `make setup`; built now if not
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "lock").touch()   # what a SIGKILL between torch's acquire and release leaves
    res = subprocess.run([sys.executable, "-c", LOAD], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "removing" in res.stderr and str(build_dir / "lock") in res.stderr
    assert not (build_dir / "lock").exists() and (build_dir / "deepspeed_shm_comm.so").is_file()

    # Loaded again (built, no stale lock): nothing to remove, nothing said.
    res = subprocess.run([sys.executable, "-c", LOAD], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0 and res.stderr == "", res.stderr[-3000:]


def test_a_lock_in_a_folder_not_ours_is_left_and_the_wait_is_said(tmp_path):
    build_dir = tmp_path / "deepspeed_shm_comm"
    build_dir.mkdir()
    (build_dir / "lock").touch()   # another program (not swcm) building the op in a shared cache
    proc = subprocess.Popen([sys.executable, "-c", LOAD], cwd=ROOT, env=_env(TORCH_EXTENSIONS_DIR=str(tmp_path)),
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    said, deadline = "", time.monotonic() + 120
    try:
        while "waiting for" not in said and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stderr], [], [], 1)[0]:
                said += proc.stderr.readline()
        assert f"waiting for {build_dir / 'lock'}" in said, said
        assert (build_dir / "lock").exists() and proc.poll() is None   # still waiting, the lock untouched
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
