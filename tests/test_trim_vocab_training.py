"""A trimmed model goes down the whole path with the existing commands: `from-encoder --trim-vocab`, prepare_data with
the trimmed tokenizer, pretraining on 2 CPU ranks (ZeRO-2), resume, `to-hf` export (which verifies itself in a fresh
process) and fine-tuning; shards made with the untrimmed tokenizer are refused with one `error:` line.

One short run of each, shared by the assertions (launches are the expensive part)."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from swcm.convert.from_encoder import convert_from_encoder
from swcm.data.prepare import prepare
from swcm.data.shards import DataError, check_fingerprint, load_index
from swcm.tokenization import load_tokenizer, tokenizer_fingerprint

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
NTREX = ROOT / "data" / "demo" / "parallel" / "ntrex128" / "ntrex128"
DEMO = ROOT / "data" / "demo" / "mono"
RANKS = 2   # ZeRO-2 partitions the trimmed embedding's gradients and optimizer state over two ranks


def _env():
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)  # the CPU training path needs no Triton
    return env


def _run(cmd, check=True):
    """Run `cmd` in its own process group (killed whole on timeout: no rank outlives the test)."""
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if check:
        assert proc.returncode == 0, f"{cmd}\n{out[-3000:]}\n{err[-4000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script, config, out, *extra):
    return _run([PY, "-m", "swcm.launcher", "--num_gpus", str(RANKS), "--master_port", _free_port(), script,
                 "--config", config, "--deepspeed_config", ROOT / "ds_configs" / "zero2.json", "--out", out, *extra])


def _slice(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("\n".join(src.read_text(encoding="utf-8").splitlines()[:n]) + "\n", encoding="utf-8")
    return dst


def _prepare(tokenizer_dir, out, mono, zh, bo):
    prepare(tokenizer_dir, out, mono=list(mono.items()), parallel=[("zh", "bo", str(zh), str(bo))], max_len=64,
            samples_per_shard=40, show_progress=False)


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory, tiny_xlmr_dir):
    root = tmp_path_factory.mktemp("trim-train")
    text = root / "text"
    text.mkdir()
    mono = {lang: _slice(DEMO / f"{lang}.txt", text / f"{lang}.txt", 80) for lang in ("bo", "zh")}
    zh, bo = (_slice(Path(f"{NTREX}.train.{lang}"), text / f"par.{lang}", 48) for lang in ("zh", "bo"))
    _run([PY, "launch/convert_checkpoint.py", "from-encoder", "--encoder", tiny_xlmr_dir, "--out", root / "swcm",
          "--trim-vocab", *mono.values(), zh, bo])
    full = convert_from_encoder(tiny_xlmr_dir, root / "swcm-full")
    _prepare(root / "swcm", root / "train", mono, zh, bo)
    _prepare(full, root / "dev-untrimmed", mono, zh, bo)
    config = {
        "model": {"path": str(root / "swcm"), "attn_implementation": "auto", "fused_lm_head_ce": True},
        "data": {"shards": str(root / "train"), "alpha": 0.3, "mt_ratio": 0.3,
                 "max_tokens": 512, "shuffle_buffer": 32, "seed": 7},
        "train": {"max_steps": 3, "lr": 1e-3, "warmup_ratio": 0.1, "log_every": 1, "save_every": 1, "keep_last": 2,
                  "dev_every": 0, "micro_batch_size": 4, "seed": 11},
    }
    (root / "pretrain.json").write_text(json.dumps(config))
    _launch("launch/pretrain.py", root / "pretrain.json", root / "run", "--max-steps", "2")
    resumed = _launch("launch/pretrain.py", root / "pretrain.json", root / "run", "--resume")
    _run([PY, "launch/convert_checkpoint.py", "to-hf", "--run", root / "run", "--out", root / "hf"])
    _run([PY, "launch/make_task_jsonl.py", "parallel", "--src", zh, "--tgt", bo, "--src-lang", "zh", "--tgt-lang",
          "bo", "--out", root / "ft.jsonl", "--limit", 32])
    ft = {"model": {"path": str(root / "hf")},
          "data": {"train": str(root / "ft.jsonl"), "dev": str(root / "ft.jsonl"), "max_len": 64, "max_tokens": 512},
          "train": {"max_steps": 2, "lr": 1e-3, "warmup_ratio": 0.1, "log_every": 1, "save_every": 2, "keep_last": 1,
                    "dev_every": 2, "dev_batches": 1, "micro_batch_size": 8, "seed": 3},
          "eval": {"metric": "chrf", "beam": 2, "max_new_tokens": 4, "batch_size": 4, "max_examples": 4}}
    (root / "ft.json").write_text(json.dumps(ft))
    _launch("launch/finetune.py", root / "ft.json", root / "ft")
    return dict(root=root, full=full, resumed=resumed.stdout + resumed.stderr)


def _steps(run: Path) -> list[int]:
    return sorted({json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()})


def test_trimmed_model_pretrains_resumes_exports_and_fine_tunes(trimmed):
    root = trimmed["root"]
    trim_map = json.loads((root / "swcm" / "trim_map.json").read_text())
    vocab = len(trim_map["old_ids"])
    assert vocab < trim_map["old_vocab_size"]
    assert _steps(root / "run") == [1, 2, 3]
    assert f"resumed from {root / 'run' / 'checkpoints' / 'step_00000002'}" in trimmed["resumed"]
    for exported in (root / "hf", root / "ft" / "hf"):
        assert json.loads((exported / "config.json").read_text())["vocab_size"] == vocab, exported
        assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(exported)) == trim_map["fingerprint"], exported
    assert _steps(root / "ft") == [1, 2]


def test_untrimmed_shards_are_refused(trimmed):
    root = trimmed["root"]
    # The check runs before any process group starts, so one process (what each rank runs) shows it.
    res = _run([PY, "launch/pretrain.py", "--config", root / "pretrain.json", "--deepspeed_config",
                ROOT / "ds_configs" / "zero2.json", "--out", root / "mixed", "--set",
                f"data.dev_shards={root / 'dev-untrimmed'}"], check=False)
    errors = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1, res.stderr[-3000:]
    assert "made with the untrimmed tokenizer" in errors[0] and str(root / "dev-untrimmed") in errors[0], errors
    # and the other way round: shards of the trimmed tokenizer for the untrimmed model
    with pytest.raises(DataError, match="made with a trimmed tokenizer"):
        check_fingerprint(load_index(root / "train"), load_tokenizer(trimmed["full"]), root / "train" / "index.json")
