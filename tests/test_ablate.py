"""launch/ablate.py --smoke: every stage on the demo corpus (tokenizer, shards, masked-LM encoder, export, each row's
init / pretraining / fine-tuning / scoring, paired bootstrap, report). Checks that every row of the table comes from
its own run, built as the row says (read back from the runs' own configs and weights, against smoke.json), that the
table's numbers are the runs' scores, and that an ablate.py killed mid-run (SIGKILL, to it alone) leaves nothing
running and, started again, ends with the same table byte for byte."""

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SMOKE = ROOT / "configs" / "ablations" / "smoke.json"
TABLES = ("results.md", "results.csv", "runs.csv")


def _env():
    env = dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("TRITON_INTERPRET", None)
    return env


def _ablate(out, *extra, timeout=1500):
    return subprocess.run([PY, "launch/ablate.py", *extra, "--out", str(out)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate") / "smoke"
    start = time.monotonic()
    res = _ablate(out, "--smoke")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    print(f"\nablate.py --smoke: {time.monotonic() - start:.0f} s")
    return out


@pytest.fixture(scope="module")
def cfg():
    return _json(SMOKE)


def _expected_pattern(layers: int, x: int) -> str:
    """The decoder layer kinds the paper's rule gives: a normal layer after every X custom layers, not after the
    last (written here independently of swcm.modeling_swcm)."""
    out = ""
    for i in range(1, layers + 1):
        out += "C"
        if x and i % x == 0 and i < layers:
            out += "N"
    return out


@pytest.mark.distributed
def test_smoke_writes_a_table_with_every_row_and_seed(smoke, cfg):
    results, runs = _rows(smoke / "results.csv"), _rows(smoke / "runs.csv")
    # the baseline (first) leads; the constant row (one per baseline seed) closes the table
    assert [r["row_id"] for r in results] == [r["id"] for r in cfg["rows"]] + ["constant"]
    seeds = {r["id"]: r.get("seeds", 1) for r in cfg["rows"]}
    assert {(r["row_id"], int(r["seeds"])) for r in results} == {*seeds.items(), ("constant", seeds[cfg["baseline"]])}
    assert sorted((r["row_id"], int(r["seed"])) for r in runs) == sorted(
        (r["id"], k) for r in cfg["rows"] for k in range(1, r.get("seeds", 1) + 1))
    table = (smoke / "results.md").read_text()
    for name in ("SWCM", "random decoder", "HF warm start", "constant (SWCM (X=3)'s most frequent output)"):
        assert f"| {name}" in table
    assert "| NLL | Δ NLL vs SWCM (X=3) [95% CI] | chrF |" in table   # the likelihood leads
    png = (smoke / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


@pytest.mark.distributed
def test_every_row_comes_from_its_own_run_built_as_the_row_says(smoke, cfg):
    from safetensors.torch import load_file

    rows = {r["id"]: r for r in cfg["rows"]}
    layers = cfg["encoder"]["num_hidden_layers"]
    mt_share = {"dae+mt": cfg["pretrain"]["mt_ratio"], "dae": 0.0, "mt": 1.0}
    weights, checkpoints = set(), set()
    for run in _rows(smoke / "runs.csv"):
        row, seed = rows[run["row_id"]], int(run["seed"])
        base = smoke / "rows" / row["id"] / f"seed{seed}"
        objectives = row.get("objectives", "dae+mt")
        ft = _json(base / "finetune" / "config.json")
        assert ft["run"]["train"]["max_steps"] == cfg["finetune"]["max_steps"]
        assert ft["run"]["train"]["seed"] == ft["run"]["data"]["seed"] == seed
        assert (base / "finetune" / "checkpoints" / f"step_{cfg['finetune']['max_steps']:08d}" / "COMPLETE").is_file()
        hf = load_file(str(base / "finetune" / "hf" / "model.safetensors"))
        weights.add(_sha(base / "finetune" / "hf" / "model.safetensors"))
        if objectives != "none":
            pre = _json(base / "pretrain" / "config.json")
            assert pre["run"]["data"]["mt_ratio"] == mt_share[objectives]
            assert pre["run"]["train"]["max_steps"] == cfg["pretrain"]["max_steps"]
            assert pre["run"]["train"]["seed"] == pre["run"]["data"]["seed"] == seed
            ckpt = base / "pretrain" / "checkpoints" / f"step_{cfg['pretrain']['max_steps']:08d}"
            checkpoints.add(_sha(next(ckpt.glob("*model_states.pt"))))
        if row.get("model", "swcm") == "swcm":
            x, init = row.get("normal_layer_every", 3), row.get("decoder_init", "encoder")
            assert pre["task"] == "pretrain" and pre["run"]["model"]["path"] == f"rows/{row['id']}/seed{seed}/init"
            assert ft["task"] == "finetune"
            assert ft["run"]["model"]["init_run"] == f"rows/{row['id']}/seed{seed}/pretrain"
            pattern = _expected_pattern(layers, x)
            assert run["decoder"] == pattern
            depth = len({k.split(".")[2] for k in hf if k.startswith("decoder.layers.")})
            assert depth == len(pattern)
            # the initialised decoder, from the weights: copied from the encoder, random, or duplicated
            w = load_file(str(base / "init" / "model.safetensors"))
            enc_ffn = w["encoder.encoder.layer.0.intermediate.dense.weight"]
            dec_ffn = w["decoder.layers.0.ffn1.intermediate.dense.weight"]
            assert (init in ("encoder", "duplicate")) == bool((enc_ffn == dec_ffn).all())
            if "N" in pattern:
                n = pattern.index("N")
                same = bool((w[f"decoder.layers.{n}.ffn.intermediate.dense.weight"]
                             == w[f"decoder.layers.{n - 1}.ffn1.intermediate.dense.weight"]).all())
                assert same == (init == "duplicate")
        else:
            assert _json(base / "finetune" / "hf" / "config.json")["model_type"] == "encoder-decoder"
            assert ft["task"] == "warm-start-finetune"
            if objectives == "none":
                assert ft["run"]["model"]["path"] == "encoder/hf" and not (base / "pretrain").exists()
            else:
                assert pre["task"] == "warm-start-pretrain" and pre["run"]["model"]["path"] == "encoder/hf"
                assert ft["run"]["model"]["path"] == f"rows/{row['id']}/seed{seed}/pretrain/hf"
            assert any(k.startswith("decoder.roberta.encoder.layer.0.crossattention.") for k in hf)
        report = _json(base / "scores.json")
        assert report["throughput"]["layout"] == "tags"   # evaluate.py --model scored every row, warm start too
        scores = report["scores"]["overall"]
        assert float(run["nll"]) == pytest.approx(scores["nll"], abs=1e-4)
        assert float(run["distinct"]) == pytest.approx(scores["distinct"], abs=1e-4)
        assert float(run["chrf"]) == pytest.approx(scores["chrf"], abs=1e-4)
        assert float(run["rouge_l_f"]) == pytest.approx(scores["rouge_l"]["f"], abs=1e-4)
        predictions = (base / "predictions.jsonl").read_text().splitlines()
        assert len(predictions) == len((smoke / "corpus" / "dev.jsonl").read_text().splitlines())
    runs = _rows(smoke / "runs.csv")
    assert len(weights) == len(runs)                                            # distinct fine-tuned models
    assert len(checkpoints) == sum(r.get("objectives", "dae+mt") != "none" for r in cfg["rows"]
                                   for _ in range(r.get("seeds", 1)))           # distinct pretraining runs


@pytest.mark.distributed
def test_the_table_is_the_runs_scores_and_the_paired_bootstrap(smoke, cfg):
    """Row means from the runs; Δ and its interval recomputed here from the prediction files, pairing each row's
    seed k with the baseline's seed k."""
    import numpy as np

    from swcm.tasks.jsonl import read_likelihood, read_predictions
    from swcm.tasks.scores import compare_predictions, score_predictions

    runs = _rows(smoke / "runs.csv")
    seeds = {r["id"]: r.get("seeds", 1) for r in cfg["rows"]}
    base = cfg["baseline"]

    def pooled(row_id, ks):
        examples, predictions, likelihood = [], [], []
        for k in ks:
            path = smoke / "rows" / row_id / f"seed{k}" / "predictions.jsonl"
            e, p = read_predictions(path)
            examples += e
            predictions += p
            likelihood.append(read_likelihood(path))
        return examples, predictions, np.concatenate(likelihood)

    for r in _rows(smoke / "results.csv"):
        if r["row_id"] == "constant":   # counted here: each language's most frequent baseline output, per seed
            chrf = []
            for k in range(1, seeds[base] + 1):
                examples, predictions, _ = pooled(base, [k])
                by_lang = {}
                for e, p in zip(examples, predictions):
                    by_lang.setdefault(e.tgt_lang, []).append(p)
                most = {lang: max(ps, key=lambda p: (ps.count(p), -ps.index(p))) for lang, ps in by_lang.items()}
                chrf.append(score_predictions(examples, [most[e.tgt_lang] for e in examples])["overall"]["chrf"])
            assert float(r["chrf_mean"]) == pytest.approx(sum(chrf) / len(chrf), abs=2e-4)
            assert r["nll_mean"] == "" and r["delta_chrf"] == ""
            continue
        mine = [float(x["chrf"]) for x in runs if x["row_id"] == r["row_id"]]
        assert float(r["chrf_mean"]) == pytest.approx(sum(mine) / len(mine), abs=2e-4)
        mine = [float(x["nll"]) for x in runs if x["row_id"] == r["row_id"]]
        assert float(r["nll_mean"]) == pytest.approx(sum(mine) / len(mine), abs=2e-4)
        if r["row_id"] == base:
            assert r["delta_chrf"] == "" and r["delta_nll"] == ""
            continue
        ks = range(1, min(seeds[r["row_id"]], seeds[base]) + 1)
        examples, a, lik_a = pooled(r["row_id"], ks)
        _, b, lik_b = pooled(base, ks)
        d = compare_predictions(examples, a, b, likelihood=lik_a, other_likelihood=lik_b)["overall"]
        for key in ("nll", "chrf", "rouge_l_f"):
            assert float(r[f"delta_{key}"]) == pytest.approx(d[key]["delta"], abs=1e-4)
            assert float(r[f"delta_{key}_low"]) == pytest.approx(d[key]["ci95"][0], abs=1e-4)
            assert float(r[f"delta_{key}_high"]) == pytest.approx(d[key]["ci95"][1], abs=1e-4)


def _forget(out: Path, stage_dirs: list[str], markers: list[str]) -> None:
    for d in stage_dirs:
        p = out / d
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    for m in markers:
        for f in (out / "done").glob(m):
            f.unlink()


@pytest.mark.distributed
def test_a_killed_ablate_continues_to_the_same_table(smoke, tmp_path):
    """A copy of the smoke run without SWCM seed 2's training (and what follows from it): ablate.py is SIGKILLed while
    that fine-tuning runs, then started again; it must finish with the uninterrupted run's tables, byte for byte."""
    out = tmp_path / "copy"
    shutil.copytree(smoke, out)
    seed2 = "rows/swcm/seed2"
    _forget(out, [f"{seed2}/pretrain", f"{seed2}/finetune", f"{seed2}/predictions.jsonl", f"{seed2}/scores.json",
                  *(str(p.relative_to(out)) for p in out.glob("rows/*/compare")), *TABLES, "results.png"],
            ["rows__swcm__seed2__pretrain.json", "rows__swcm__seed2__finetune.json", "rows__swcm__seed2__predict.json",
             "rows__*__compare.json", "report.json"])
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([PY, "launch/ablate.py", "--smoke", "--out", str(out)], cwd=ROOT, env=_env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ckpt = out / seed2 / "finetune" / "checkpoints" / "step_00000002" / "COMPLETE"
        deadline = time.monotonic() + 900
        while not ckpt.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.05)
        started = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)      # ablate.py alone: what it started must not outlive it
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "done" / "rows__swcm__seed2__finetune.json").exists()
    assert not (out / "results.csv").exists()

    res = _ablate(out, "--smoke")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    for name in TABLES:
        assert (out / name).read_bytes() == (smoke / name).read_bytes(), name
    assert "resumed from" in (out / "logs" / "rows__swcm__seed2__finetune.log").read_text()


def test_ablate_rejects_bad_input_before_any_work(tmp_path):
    bad_rows = _json(SMOKE)
    bad_rows["rows"].append(dict(bad_rows["rows"][0]))
    (tmp_path / "dup.json").write_text(json.dumps(bad_rows))
    other = tmp_path / "other"
    other.mkdir()
    (other / "ablation.json").write_text("{}")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something.txt").write_text("x")
    cases = [(["--smoke", "--set", "encoder.bogus=1"], tmp_path / "a", "unknown key 'bogus'"),
             (["--smoke", "--set", "finetune.lr=0"], tmp_path / "b", "finetune.lr"),
             (["--config", str(tmp_path / "dup.json")], tmp_path / "c", "ids repeat"),
             (["--config", str(tmp_path / "missing.json")], tmp_path / "d", "config file not found"),
             (["--smoke"], other, "another config"),
             (["--smoke"], busy, "not an ablation directory")]
    for args, out, message in cases:
        res = _ablate(out, *args, timeout=120)
        err = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    for out in (tmp_path / "a", tmp_path / "b", tmp_path / "c", tmp_path / "d"):
        assert not out.exists()
    assert sorted(p.name for p in busy.iterdir()) == ["something.txt"]
