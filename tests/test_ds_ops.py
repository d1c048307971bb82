"""DeepSpeed's CPU collective op: a lock file left by a process killed while it loaded the op does not make the next
run wait for ever (torch's own loader would: it waits while the file exists)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOAD = "from swcm.training.ds_ops import load_shm_comm_op; load_shm_comm_op()"


@pytest.mark.slow   # builds the op from source in a fresh extensions folder (~20-90 s)
def test_a_stale_build_lock_is_removed_and_the_op_loads(tmp_path):
    build_dir = tmp_path / "deepspeed_shm_comm"
    build_dir.mkdir()
    (build_dir / "lock").touch()   # what a SIGKILL between torch's acquire and release leaves
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), DS_ACCELERATOR="cpu")
    res = subprocess.run([sys.executable, "-c", f"import logging; logging.basicConfig(); {LOAD}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "removing" in res.stderr and str(build_dir / "lock") in res.stderr
    assert not (build_dir / "lock").exists() and (build_dir / "deepspeed_shm_comm.so").is_file()

    # Loaded again (built now, no stale lock): nothing to remove, nothing said.
    res = subprocess.run([sys.executable, "-c", f"import logging; logging.basicConfig(); {LOAD}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0 and "removing" not in res.stderr, res.stderr[-3000:]
