"""prepare_data over datatrove tasks: any task and worker count gives the same samples, the same task count the
same bytes; a run killed outright resumes, redoing only the tasks that had not completed; the SLURM job scripts
are generated and work (each array index run here as SLURM would run it, without SLURM)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swcm.data.prepare import inputs_from, prepare, submit_slurm
from swcm.data.shards import load_index, read_shard

pytestmark = pytest.mark.slow   # prepare runs over process pools, CLI subprocesses killed and re-run

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
NTREX = DEMO / "parallel" / "ntrex128"


def _shard_set(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".tar", ".npz")}


def _samples(out: Path) -> list[tuple]:
    """Every sample as (id, meta, token bytes), sorted: the multiset a task count must not change."""
    index = load_index(out)
    got = []
    for name in index["shards"]:
        for s in read_shard(str(out / name)):
            arrays = tuple(s[k].tobytes() for k in ("ids", "src", "tgt") if k in s)
            got.append((s["meta"]["id"], json.dumps(s["meta"], sort_keys=True), arrays))
    return sorted(got)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Mono kk and zh, an aligned kk-zh pair and parallel JSONL records: every kind of input."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "pairs.jsonl").write_text("".join(
        json.dumps({"src": s, "tgt": t, "src_lang": "mn", "tgt_lang": "zh"}, ensure_ascii=False) + "\n"
        for s, t in zip((NTREX / "ntrex128.train.mn").read_text(encoding="utf-8").splitlines()[:60],
                        (NTREX / "ntrex128.train.zh").read_text(encoding="utf-8").splitlines()[:60])),
        encoding="utf-8")
    return {"mono": [("kk", str(DEMO / "mono/kk.txt")), ("zh", str(DEMO / "mono/zh.txt"))],
            "parallel": [("kk", "zh", str(NTREX / "ntrex128.train.kk"), str(NTREX / "ntrex128.train.zh"))],
            "parallel_jsonl": [str(d / "pairs.jsonl")]}


@pytest.fixture(scope="module")
def runs(corpus, tokenizer, tmp_path_factory) -> dict:
    """(tasks, workers) -> the shard directory of a run with that layout."""
    d = tmp_path_factory.mktemp("runs")
    out = {}
    for tasks, workers in ((1, 1), (3, 1), (3, 2), (4, 2)):
        out[(tasks, workers)] = d / f"t{tasks}w{workers}"
        prepare(tokenizer.saved_dir, out[(tasks, workers)], **corpus, samples_per_shard=100, tasks=tasks,
                workers=workers, show_progress=False)
    return out


def test_any_task_count_gives_the_same_samples(runs):
    reference = _samples(runs[(1, 1)])
    assert len(reference) > 300 and len({s[0] for s in reference}) == len(reference)   # none twice
    for layout, out in runs.items():
        assert _samples(out) == reference, layout
        assert load_index(out)["totals"] == load_index(runs[(1, 1)])["totals"], layout


def test_the_same_task_count_gives_the_same_bytes(runs):
    assert _shard_set(runs[(3, 1)]) == _shard_set(runs[(3, 2)])
    names = set(load_index(runs[(3, 1)])["shards"])
    assert {n.split("-t")[1][:5] for n in names} == {"00000", "00001", "00002"}   # every task wrote shards
    assert not [p for p in runs[(3, 1)].iterdir() if p.name in ("tasks", ".datatrove", "run.json")]


def _cli(tokenizer, out: Path, corpus: dict, *extra) -> list[str]:
    cmd = [sys.executable, str(ROOT / "launch/prepare_data.py"), "--tokenizer", str(tokenizer.saved_dir),
           "--out", str(out), "--samples-per-shard", "100", *extra]
    cmd += [x for lang, f in corpus["mono"] for x in ("--mono", f"{lang}={f}")]
    cmd += [x for sl, tl, s, t in corpus["parallel"] for x in ("--parallel", f"{sl}-{tl}={s},{t}")]
    return cmd + [x for f in corpus["parallel_jsonl"] for x in ("--parallel-jsonl", f)]


def test_a_killed_run_resumes_with_only_the_unfinished_tasks(corpus, runs, tokenizer, tmp_path):
    """SIGKILL to the whole process group (a lost node) once some of 4 tasks have completed; the same command
    again runs only the others and ends with the shard set of the uninterrupted 4-task run."""
    out = tmp_path / "out"
    cmd = _cli(tokenizer, out, corpus, "--tasks", "4", "--workers", "1")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    completions = tmp_path / ".out.tmp-prepare" / ".datatrove" / "completions"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and len(list(completions.glob("*"))) < 2:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.name) for p in completions.iterdir())
    assert 1 <= len(done) < 4 and not out.exists(), done
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    ran = re.search(r"running (\d+) of 4 tasks \(ranks ([\d,]*)\)", again.stderr)
    assert ran and [int(r) for r in ran.group(2).split(",")] == [r for r in range(4) if r not in done], again.stderr
    assert f"resuming: {len(done)} of 4 tasks completed by an earlier run" in again.stderr
    assert _shard_set(out) == _shard_set(runs[(4, 2)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_slurm_job_scripts_and_resume_without_slurm(corpus, runs, tokenizer, tmp_path, monkeypatch):
    """The job array and the merge job as datatrove would submit them (sbatch replaced by a recorder); then each
    array index run as SLURM would run it (`launch_pickled_pipeline`, SLURM_ARRAY_TASK_ID), one left out and
    resubmitted: the second array has that one index only, and the merge ends with the local 3-task set."""
    import datatrove.executor.slurm as dt_slurm

    submitted = []

    def sbatch(script, _retriever, *args):
        submitted.append((script, args))
        return str(1000 + len(submitted))

    monkeypatch.setattr(dt_slurm, "launch_slurm_job", sbatch)
    out, logs = tmp_path / "out", tmp_path / "logs"
    kwargs = dict(inputs=inputs_from(**corpus), tasks=3, logs=logs, samples_per_shard=100,
                  slurm={"partition": "cpu", "time": "1:00:00", "mem_per_cpu_gb": 3, "workers": 2})
    first = submit_slurm(tokenizer.saved_dir, out, **kwargs)
    array, = [s for s, _ in submitted if "launch_pickled_pipeline" in s and "/.datatrove/" in s]
    merge, = [(s, a) for s, a in submitted if "launch_pickled_pipeline" in s and "/logs/merge/" in s]
    assert "#SBATCH --array=0-2%2" in array and "#SBATCH --partition=cpu" in array
    assert "#SBATCH --mem-per-cpu=3G" in array and f"#SBATCH --output={logs}/slurm/%A_%a.out" in array
    assert f"source {sys.prefix}/bin/activate" in array
    assert f"--dependency=afterok:{first['array_job']}" in merge[1] and "#SBATCH --array=0-0" in merge[0]
    stage = Path(first["stage"])
    assert Path(first["launch_script"]).read_text() == array

    def run_index(logging_dir: Path, index: int):
        env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(index), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        done = subprocess.run([str(Path(sys.prefix) / "bin" / "launch_pickled_pipeline"),
                               str(logging_dir / "executor.pik")], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    run_index(stage / ".datatrove", 0)
    run_index(stage / ".datatrove", 2)        # index 1 "fails" (never runs)
    submitted.clear()
    second = submit_slurm(tokenizer.saved_dir, out, **kwargs)
    assert second["tasks_done_before"] == 2
    array, = [s for s, _ in submitted if "launch_pickled_pipeline" in s and "/.datatrove/" in s]
    assert "#SBATCH --array=0-0%2" in array   # only the task left
    assert json.loads((stage / ".datatrove" / "ranks_to_run.json").read_text()) == [1]
    run_index(stage / ".datatrove", 0)        # array index 0 of the resubmission is rank 1
    run_index(logs / "merge", 0)
    assert _shard_set(out) == _shard_set(runs[(3, 1)])
    assert not stage.exists()


def test_slurm_wrapper_passes_its_arguments_and_fails_cleanly_without_slurm(corpus, tokenizer, tmp_path):
    script = ROOT / "launch" / "slurm_prepare.sh"
    echoed = subprocess.run(["bash", str(script), "TOK", "OUT", "cpu", "16", "--mono", "bo=a/*.gz"],
                            capture_output=True, text=True, env=dict(os.environ, PY="echo", MAX_RUNNING="8", TIME="2:00:00"), timeout=30)
    assert echoed.stdout.split()[1:] == ["--executor", "slurm", "--tokenizer", "TOK", "--out", "OUT", "--partition",
                                         "cpu", "--tasks", "16", "--time", "2:00:00", "--mem-per-cpu-gb", "2",
                                         "--workers", "8", "--mono", "bo=a/*.gz"]
    mono = [x for lang, f in corpus["mono"] for x in ("--mono", f"{lang}={f}")]
    env = dict(os.environ, PY=sys.executable, PATH="/usr/bin:/bin")   # no sbatch on this PATH
    done = subprocess.run(["bash", str(script), str(tokenizer.saved_dir), str(tmp_path / "out"), "cpu", "4", *mono],
                          capture_output=True, text=True, env=env, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and errors == ["error: --executor slurm: sbatch not found; run this on a SLURM login "
                                               "node"] and "Traceback" not in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []   # no stage, no logs left


def test_a_stage_left_by_a_run_with_other_inputs_is_removed(tokenizer, tmp_path):
    """A killed run's stage is resumed only by the same command; any other run removes it first."""
    from swcm.data.shards import check_shards

    kk = tmp_path / "kk.txt"
    kk.write_text("Сәлем\nӘлем\n", encoding="utf-8")
    stage = tmp_path / ".out.tmp-prepare"
    (stage / ".datatrove" / "completions").mkdir(parents=True)
    (stage / ".datatrove" / "completions" / "00000").write_text("")
    (stage / "run.json").write_text('{"inputs": "another corpus"}')
    (stage / "mono-kk-t00000-000000.tar").write_bytes(b"not ours to keep")
    prepare(tokenizer.saved_dir, tmp_path / "out", mono=[("kk", str(kk))], show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kk.txt", "out"]
    assert check_shards(tmp_path / "out", tokenizer, verify_hashes=True)["totals"]["all"]["samples"] == 2
