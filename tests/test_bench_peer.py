"""benchmarks/bench_peer.py at a tiny size (one pair): both sides train on the same export and the same batches, and
the benchmark writes its CSV rows and the markdown table. The last-step losses must agree within 2% (issue 22's
tolerance); with dropout off, the same initial weights, the same batches, AdamW and schedule, what may still differ
is how the loss is averaged (swcm: per token over the whole step; Hugging Face: per token on each rank, then the mean
over ranks) and the order of floating-point sums. swcm's rank 0 must end the run (final save, export, verification)
without raising its peak RSS by more than 10% over the training peak (issue item 3)."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed   # two 2-rank DeepSpeed runs

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_peer.py"
STEPS = 5


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench_peer")
    results = work / "rows.csv"
    proc = subprocess.run([sys.executable, str(BENCH), "--pairs", "1", "--steps", str(STEPS), "--timed-from", "3",
                           "--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "8007", "--micro-batch", "4",
                           "--dropout", "0", "--work", str(work), "--results", str(results), "--port", "29671"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    with open(results) as f:
        rows = list(csv.DictReader(f))
    return rows, proc.stdout, work


def test_csv_has_one_row_per_side_with_every_column(bench):
    rows, _, _ = bench
    assert [r["side"] for r in rows] == ["swcm", "hf"]
    for r in rows:
        assert float(r["tokens_per_s"]) > 0
        per_rank = [float(x) for x in r["train_peak_gb_per_rank"].split("/")]
        assert len(per_rank) == 2 and max(per_rank) == pytest.approx(float(r["train_peak_gb_max"]), abs=1e-3)
        # the whole-process high-water mark cannot lie below what was sampled during training
        assert float(r["process_peak_gb_max"]) >= float(r["train_peak_gb_max"]) - 1e-3
        assert float(r["load_mean"]) >= 0 and r["competing_load"] == "0"
        assert int(r["steps"]) == STEPS and r["git"] and r["device"]


def test_both_sides_last_step_losses_agree_within_two_percent(bench):
    rows, _, _ = bench
    swcm, hf = (float(r["loss_last"]) for r in rows)
    assert abs(swcm - hf) <= 0.02 * hf, (swcm, hf)


def test_both_sides_trained_on_the_same_examples(bench):
    """The HF side read swcm's sample log: the tokens it counted per step equal swcm's."""
    import json

    _, _, work = bench
    swcm = [json.loads(x)["tokens"] for x in (work / "swcm_pair1" / "metrics.jsonl").read_text().splitlines()]
    per_rank = [[json.loads(x)["tokens"] for x in (work / "hf_pair1" / f"steps_rank{r}.jsonl").read_text().splitlines()]
                for r in range(2)]
    assert swcm == [a + b for a, b in zip(*per_rank)]


def test_markdown_table_gives_ratios_and_the_command(bench):
    _, out, _ = bench
    assert "| pair | swcm tok/s | HF tok/s | swcm/HF |" in out
    assert "`python benchmarks/bench_peer.py --pairs 1" in out
    assert "| mean |" in out


def test_end_of_run_does_not_raise_rank0_peak(bench):
    """swcm's own record: the peak over the whole process (export and verification included) against the peak at the
    end of training."""
    import json

    _, _, work = bench
    perf = json.loads((work / "swcm_pair1" / "perf" / "rank0.json").read_text())
    assert perf["process_peak_gb"] <= 1.1 * perf["peak_memory_gb"], perf
