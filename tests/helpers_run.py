"""A real run directory for conversion tests, without a training run: a one-rank ZeRO-2 engine (no launcher) saves
one checkpoint of an SWCM model, with the run's model config, tokenizer, config.json and metrics.jsonl."""

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENGINE = r"""
import json, sys
from pathlib import Path
import deepspeed, torch
from swcm.modeling_swcm import SWCMForConditionalGeneration
from swcm.tokenization import load_tokenizer
from swcm.training import checkpointing
model_dir, run = Path(sys.argv[1]), Path(sys.argv[2])
ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2}, "steps_per_print": 10 ** 9}
from swcm.training.ds_ops import load_shm_comm_op
load_shm_comm_op()   # builds or loads the op in our own folder, past a lock a killed process left
deepspeed.init_distributed(dist_backend="gloo")
model = SWCMForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32)
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=ds)
model.config.save_pretrained(str(run / "model"))
load_tokenizer(model_dir).save_pretrained(str(run / "model"))
(run / "config.json").write_text(json.dumps({"run": {}, "deepspeed": ds, "world_size": 1}))
(run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
checkpointing.save(engine, run / "checkpoints", 1, loader_state={}, run_state={"step": 1}, keep_last=1)
"""


def build_zero2_run(model_dir: Path, run: Path, env: dict) -> Path:
    """Write a run directory at `run` holding one complete ZeRO-2 checkpoint (step 1) of the model in `model_dir`;
    `env` is the environment of the one-rank engine process (a free port is added)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(env, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port))
    proc = subprocess.run([sys.executable, "-c", ENGINE, str(model_dir), str(run)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run
