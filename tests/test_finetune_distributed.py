"""`deepspeed launch/finetune.py` on 2 CPU ranks: ZeRO-0 and ZeRO-3 give the same losses, a SIGKILLed run resumed
with --resume reproduces the uninterrupted losses, dev evaluation scores generations, the best checkpoint is kept
and exported to RUN/hf with the target tag forced for a plain generate()."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
DS = str(Path(sys.executable).with_name("deepspeed"))
NTREX = ROOT / "data" / "demo" / "parallel" / "ntrex128" / "ntrex128"
STEPS = 12


def _env():
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    return env


def _run(cmd):
    res = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_xlmr_dir):
    root = tmp_path_factory.mktemp("finetune")
    _run([PY, "launch/convert_checkpoint.py", "from-encoder", "--encoder", tiny_xlmr_dir, "--out", root / "swcm",
          "--normal-layer-every", "3"])
    for split, n in (("train", 96), ("dev", 12)):
        _run([PY, "launch/make_task_jsonl.py", "parallel", "--src", f"{NTREX}.{split}.zh", "--tgt",
              f"{NTREX}.{split}.bo", "--src-lang", "zh", "--tgt-lang", "bo", "--out", root / f"{split}.jsonl",
              "--limit", n])
    config = {
        "model": {"path": str(root / "swcm")},
        "data": {"train": str(root / "train.jsonl"), "dev": str(root / "dev.jsonl"), "max_len": 64,
                 "max_tokens": 1024},
        "train": {"max_steps": STEPS, "lr": 1e-3, "warmup_ratio": 0.1, "log_every": 4, "save_every": 4,
                  "keep_last": 1, "dev_every": 4, "dev_batches": 2, "micro_batch_size": 8, "seed": 3,
                  "gloo_piece_mb": 0.25},
        "eval": {"metric": "chrf", "beam": 2, "max_new_tokens": 6, "batch_size": 4, "max_examples": 6},
    }
    (root / "ft.json").write_text(json.dumps(config))
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(setup, out, stage, *, resume=False, launcher=(PY, "-m", "swcm.launcher")):
    """finetune.py on 2 ranks; under swcm-launch unless `launcher` is DeepSpeed's (which costs ~5 s more a launch:
    its runner and per-node launcher each import DeepSpeed)."""
    cmd = [*launcher, "--num_gpus", "2", "--master_port", str(_free_port()), "launch/finetune.py",
           "--config", setup / "ft.json", "--deepspeed_config", ROOT / "ds_configs" / f"{stage}.json", "--out", out]
    if resume:
        cmd.append("--resume")
    log = open(f"{out}.{'resume' if resume else 'first'}.log", "w")
    return subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait(proc, out, timeout=400):
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return code


def _log(out, resume=False):
    return Path(f"{out}.{'resume' if resume else 'first'}.log").read_text()[-5000:]


def _losses(out):
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def runs(setup):
    outs = {}
    for stage in ("zero0", "zero3"):
        out = setup / f"ft_{stage}"
        proc = _launch(setup, out, stage, launcher=(DS,) if stage == "zero0" else (PY, "-m", "swcm.launcher"))
        assert _wait(proc, out) == 0, _log(out)
        outs[stage] = out
    return outs


def test_zero0_and_zero3_fine_tune_alike_and_keep_the_best_export(runs):
    ref, other = _losses(runs["zero0"]), _losses(runs["zero3"])
    assert sorted(ref) == list(range(1, STEPS + 1)) and ref[STEPS] < ref[1]
    for step in ref:
        assert other[step] == pytest.approx(ref[step], rel=1e-4), step
    out = runs["zero0"]
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "chrf" and best["step"] in (4, 8, 12)
    # the best checkpoint survives rotation (keep_last 1), and RUN/hf holds it
    steps = sorted(int(d.name[5:]) for d in (out / "checkpoints").iterdir() if (d / "COMPLETE").exists())
    assert best["step"] in steps and STEPS in steps
    assert len(list((out / "dev_predictions").glob("step_*.jsonl"))) == 3
    card = json.loads((out / "hf" / "generation_config.json").read_text())
    tokenizer_added = json.loads((out / "hf" / "config.json").read_text())["lang_token_ids"]
    assert card["forced_bos_token_id"] == tokenizer_added["bo"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    for tag in ("dev/loss", "dev/chrf", "dev/rouge_l", "dev/bleu"):
        assert [e.step for e in acc.Scalars(tag)] == [4, 8, 12], tag


def _rank_pids(launcher):
    return [p for p in psutil.Process(launcher.pid).children(recursive=True)
            if any(c.startswith("--local_rank=") for c in p.cmdline())]


def _wait_past_the_first_checkpoint(proc, out, steps: int) -> None:
    """Poll until step 4's checkpoint is complete and `steps` steps are logged (the run still going)."""
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step_00000004" / "COMPLETE").exists() or len(_losses(out)) < steps:
        assert proc.poll() is None and time.time() < deadline, _log(out)
        time.sleep(0.05)


def test_sigkill_and_resume_reproduce_the_uninterrupted_losses(setup, runs):
    out = setup / "killed"
    proc = _launch(setup, out, "zero0")
    _wait_past_the_first_checkpoint(proc, out, steps=6)
    _rank_pids(proc)[0].send_signal(signal.SIGKILL)
    assert _wait(proc, out) != 0
    proc = _launch(setup, out, "zero0", resume=True)
    assert _wait(proc, out) == 0, _log(out, resume=True)
    ref, got = _losses(runs["zero0"]), _losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(5, STEPS + 1):
        assert got[step] == pytest.approx(ref[step], abs=1e-6), step
    assert json.loads((out / "best.json").read_text()) == json.loads((runs["zero0"] / "best.json").read_text())


def test_sigterm_saves_and_exits_0_without_an_export_and_resume_finishes_it(setup, runs):
    """A SIGTERMed fine-tuning run saves and exits 0 with no RUN/hf and no best.json (a run it has not finished has
    no best checkpoint to name); --resume finishes it with the uninterrupted run's best.json and exports then."""
    out = setup / "terminated"
    proc = _launch(setup, out, "zero0")
    _wait_past_the_first_checkpoint(proc, out, steps=5)
    os.killpg(proc.pid, signal.SIGTERM)
    assert _wait(proc, out) == 0, _log(out)
    stopped = max(_losses(out))
    assert stopped < STEPS and (out / "checkpoints" / f"step_{stopped:08d}" / "COMPLETE").exists()
    assert not (out / "hf").exists() and not (out / "best.json").exists()
    proc = _launch(setup, out, "zero0", resume=True)
    assert _wait(proc, out) == 0, _log(out, resume=True)
    assert json.loads((out / "best.json").read_text()) == json.loads((runs["zero0"] / "best.json").read_text())
    assert (out / "hf" / "model.safetensors").is_file()
