"""Run a Python script the way a user without swcm installed would: site-packages only, swcm not importable."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

_PRELUDE = f"""import sys
sys.path.append({sysconfig.get_paths()["purelib"]!r})  # started with -S: swcm's editable-install hook never runs
try:
    import swcm
    raise SystemExit("swcm is importable in this process")
except ImportError:
    pass
"""


def run_without_swcm(script: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `script` (Python source) in a fresh interpreter in `cwd`, offline, stdin closed, swcm unimportable;
    HF's module cache (remote code) lives in `cwd`."""
    (cwd / "script.py").write_text(_PRELUDE + script)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_MODULES_CACHE": str(cwd / "modules"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-S", "script.py"], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)
