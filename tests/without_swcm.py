"""Run a Python script the way a user without swcm installed would: site-packages only, swcm not importable."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

_PRELUDE = f"""import sys
sys.path.append({sysconfig.get_paths()["purelib"]!r})  # started with -S: swcm's editable-install hook never runs
try:
    import swcm
    raise SystemExit("swcm is importable in this process")
except ImportError:
    pass
"""


def _prepare(script: str, cwd: Path) -> dict:
    """Write the script into `cwd`; the environment to run it in."""
    (cwd / "script.py").write_text(_PRELUDE + script)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_MODULES_CACHE": str(cwd / "modules"), "OMP_NUM_THREADS": "1"}
    if "PYTHONPATH" in os.environ:   # e.g. an older transformers laid over the venv's (make test-transformers-floor)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def run_without_swcm(script: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `script` (Python source) in a fresh interpreter in `cwd`, offline, stdin closed, swcm unimportable;
    HF's module cache (remote code) lives in `cwd`."""
    env = _prepare(script, cwd)
    return subprocess.run([sys.executable, "-S", "script.py"], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def run_without_swcm_in_a_terminal(script: str, cwd: Path, timeout: int = 120) -> tuple[int | None, str]:
    """As `run_without_swcm`, but with a pseudo-terminal for stdin, stdout and stderr, as in an interactive session,
    and nothing ever typed: (exit status, or None if it was still running after `timeout` s and was killed;
    everything it wrote)."""
    env = _prepare(script, cwd)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-S", "script.py"], cwd=cwd, env=env, stdin=terminal,
                            stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    output, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:   # EIO: every copy of the terminal's other end is closed, the process ended
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(controller)
    try:   # the terminal closes a moment before the process is gone: wait for it, within the deadline
        return proc.wait(timeout=max(deadline - time.monotonic(), 1)), output.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, output.decode("utf-8", "replace")
