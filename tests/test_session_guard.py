"""tests/session_guard.py: a session that leaves a process running or a /dev/shm file behind fails, naming them, and
they are cleaned up; a session that leaves nothing passes."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

TESTS = Path(__file__).resolve().parent

LEAKY = '''
import subprocess, sys
def test_leaks():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open("/dev/shm/{name}", "wb").write(b"x")
'''

CLEAN = '''
import subprocess, sys
def test_cleans_up():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
'''


def _session(tmp_path, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_inner.py").write_text(source)
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "session_guard", "-p", "no:cacheprovider",
                           "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_leaky_session_fails_and_is_cleaned_up(tmp_path):
    name = f"swcm-session-guard-{uuid.uuid4().hex}"
    res = _session(tmp_path, LEAKY.format(name=name))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "did not leave the machine as it found it" in res.stderr
    assert "still running" in res.stderr and "time.sleep(120)" in res.stderr
    assert f"/dev/shm/{name} left behind" in res.stderr
    assert not Path("/dev/shm", name).exists()


def test_a_clean_session_passes(tmp_path):
    res = _session(tmp_path, CLEAN)
    assert res.returncode == 0 and "did not leave" not in res.stderr, res.stdout + res.stderr
