"""benchmarks/gpu_check.py (`make gpu-check`): its CPU dry run completes each of the four parts and writes their rows,
and its verdicts can fail (diverging loss curves, a crashing part -> exit 1).

The dry run is forced onto the CPU (CUDA_VISIBLE_DEVICES="") so that this test is the same on a GPU machine; the
GPU run itself is `make gpu-check`.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402  (no side effects on import: the script sets TRITON_INTERPRET itself when run)

pytestmark = pytest.mark.distributed   # part d launches DeepSpeed


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cpu_dry_run_completes_all_four_parts(tmp_path):
    impls = "auto,sdpa"   # what `make gpu-check` compares (auto is SDPA on the CPU, Triton on a GPU)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--csv-dir", str(tmp_path),
                          "--train-impls", impls], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout
    assert res.returncode == 0, f"{out[-6000:]}\n{res.stderr[-4000:]}"
    result = json.loads(out.strip().splitlines()[-1].removeprefix("GPU-CHECK-RESULT "))
    assert result["dry_run"] is True and "no GPU found" in out
    assert {k: v["status"] for k, v in result["parts"].items()} == dict.fromkeys("abcd", "ok"), result

    (tests,) = _csv_rows(tmp_path / "gpu_tests.csv")
    # the GPU-only tests were collected (and skipped without CUDA), none failed
    assert int(tests["skipped"]) >= 20 and tests["failed"] == tests["error"] == "0" and tests["run"] == "cpu-dry-run"

    attention = _csv_rows(tmp_path / "gpu_attention.csv")
    assert len(attention) == 4 and {r["causal"] for r in attention} == {"True", "False"}
    for r in attention:
        assert r["status"] == "ok" and float(r["triton_tflops"]) > 0 and float(r["sdpa_tflops"]) > 0
        assert all(float(r[f"err_{n}"]) < 0.1 for n in ("out", "dq", "dk", "dv"))

    head = _csv_rows(tmp_path / "gpu_lm_head_ce.csv")
    assert sorted((r["variant"], r["V"]) for r in head) == sorted(
        (v, str(V)) for v in ("naive", "fused") for V in gpu_check.Shapes(gpu=False).ce_vocabs)
    assert all(r["status"] == "ok" and float(r["err_loss"]) < 1e-3 for r in head if r["variant"] == "fused")

    train = _csv_rows(tmp_path / "gpu_train.csv")
    assert [r["attn"] for r in train] == impls.split(",")
    steps = str(gpu_check.Shapes(gpu=False).train_steps)
    for r in train:
        assert r["status"] == "ok" and r["steps"] == steps and float(r["tokens_per_s"]) > 0
        assert float(r["peak_memory_gb"]) > 0 and 0 < float(r["mfu"]) and float(r["loss_last"]) > 0


def _metrics(losses, tokens=100, step_time=0.5):
    return [{"step": i + 1, "loss": loss, "tokens": tokens, "step_time_s": step_time} for i, loss in enumerate(losses)]


def test_training_comparison_fails_when_it_should():
    perf = {"peak_memory_gb": 2.0}
    same = {"auto": (_metrics([10.0, 9.0, 8.0]), perf), "sdpa": (_metrics([10.0, 9.0, 8.0]), perf)}
    rows, failures = gpu_check.compare_training(same, 3, "bf16", n_params=1e6, peak_flops=1e12)
    assert failures == [] and [r["attn"] for r in rows] == ["auto", "sdpa"]
    assert rows[0]["tokens_per_s"] == 200.0  # steps 2-3: 200 tokens in 1 s
    assert rows[0]["mfu"] == pytest.approx(3 * 1e6 * 200 / 1e12)

    diverged = {"auto": (_metrics([10.0, 9.0, 8.5]), perf), "sdpa": (_metrics([10.0, 9.0, 8.0]), perf)}
    assert "loss curves differ: step 3" in " ".join(gpu_check.compare_training(diverged, 3, "bf16", 1e6, 1e12)[1])
    other_batches = {"auto": (_metrics([10.0, 9.0, 8.0], tokens=99), perf), "sdpa": same["sdpa"]}
    assert "different batches" in " ".join(gpu_check.compare_training(other_batches, 3, "bf16", 1e6, 1e12)[1])
    short = {"auto": (_metrics([10.0, 9.0]), perf), "sdpa": same["sdpa"]}
    assert "expected 3 finite losses" in " ".join(gpu_check.compare_training(short, 3, "bf16", 1e6, 1e12)[1])
    nan = {"auto": (_metrics([10.0, float("nan"), 8.0]), perf), "sdpa": same["sdpa"]}
    assert gpu_check.compare_training(nan, 3, "bf16", 1e6, 1e12)[1]


def test_a_crashing_part_fails_the_run(tmp_path, monkeypatch, capsys):
    def broken(ctx):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(gpu_check.PARTS, "b", ("attention", broken))
    assert gpu_check.main(["--parts", "b", "--csv-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "kernel exploded" in out
