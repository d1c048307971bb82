"""Handing back a DeepSpeed engine before the end-of-run export (swcm/training/release.py): after one ZeRO-2 step of a
134 MB model, releasing the engine returns at least the weights and both Adam moments (3 x 134 MB) to the OS, so the
export that follows reuses that memory instead of raising the process's peak. Run in a fresh process (one rank, gloo)
whose RSS says only what this engine held."""

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.distributed   # starts a (one-rank) DeepSpeed process group in a child process

SCRIPT = r"""
import json, os, sys
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                  DS_ACCELERATOR="cpu")
import torch
from swcm.config import TrainConfig
from swcm.training.engine import build_engine, init_process_group
from swcm.training.release import release_engine, return_freed_memory

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

init_process_group(0)
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(8)])
param_bytes = sum(p.numel() * 4 for p in model.parameters())
ds = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
      "zero_optimization": {"stage": 2}, "steps_per_print": 10 ** 9}
engine, scheduler = build_engine(model, TrainConfig(), ds, 10)
del model
loss = engine(torch.randn(4, 2048)).pow(2).mean()
engine.backward(loss)
engine.step()
del loss
trained = rss()
release_engine(engine)
del engine, scheduler
return_freed_memory()
print(json.dumps({"param_bytes": param_bytes, "trained": trained, "released": rss()}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_release_returns_weights_and_optimizer_states_to_the_os():
    # glibc reads its thresholds at start-up: large blocks mmapped, so that a free is visible in RSS at once
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(_free_port())], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    freed = r["trained"] - r["released"]
    assert freed >= 2.5 * r["param_bytes"], (freed / 2 ** 20, r)
