"""`deepspeed launch/pretrain.py` (and `swcm-launch`) on CPU ranks: ZeRO stages agree, exact resume after SIGKILL,
a failed save and preemption signals (interrupted saves ignored, damaged checkpoints skipped), 2 simulated nodes = 1
node x 2 ranks, TensorBoard holds every scalar, elastic resume at other world sizes and stages.

Launches are the expensive part (~7 s each under swcm-launch, ~12 s under `deepspeed`, whose runner and per-node
launcher each import DeepSpeed first), so a few reference runs are shared by several tests, and only the runs that
test DeepSpeed's launcher itself (a reference run, a rank's death, two nodes) go through it.
"""

import json
import os
import shutil
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
SWCM_LAUNCH = (PY, "-m", "swcm.launcher")
STEPS = 24
SAVE_EVERY = 4
DEMO = ROOT / "data" / "demo"
NTREX = DEMO / "parallel" / "ntrex128" / "ntrex128"


def _env():
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)  # the CPU training path needs no Triton
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slice(src: Path, dst: Path, n: int) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines()[:n]
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def _run(cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_env(), capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


def _shm_buffers(port: int) -> list[Path]:
    """DeepSpeed's /dev/shm all-reduce buffers of the job on `port` (its ranks unlink them once all have mapped them,
    so that a killed rank leaves none)."""
    return sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


@pytest.fixture(scope="session")
def assets(tmp_path_factory, tiny_xlmr_dir):
    """An SWCM init converted from the tiny XLM-R, train/dev shards of real demo text, a run config."""
    root = tmp_path_factory.mktemp("pretrain")
    _run([PY, "launch/convert_checkpoint.py", "from-encoder", "--encoder", tiny_xlmr_dir, "--out", root / "swcm",
          "--normal-layer-every", "3"])
    text = root / "text"
    text.mkdir()
    mono = {lang: _slice(DEMO / "mono" / f"{lang}.txt", text / f"{lang}.txt", 120) for lang in ("bo", "kk", "ug", "zh")}
    mono["mn"] = _slice(Path(f"{NTREX}.train.mn"), text / "mn.txt", 120)
    par = {lang: _slice(Path(f"{NTREX}.train.{lang}"), text / f"par.{lang}", 60) for lang in ("bo", "kk", "mn", "ug", "zh")}
    dev = {lang: _slice(Path(f"{NTREX}.dev.{lang}"), text / f"dev.{lang}", 16) for lang in ("bo", "kk", "mn", "ug", "zh")}

    def prepare(out, mono_files, par_files):
        cmd = [PY, "launch/prepare_data.py", "--tokenizer", root / "swcm", "--out", out, "--max-len", "64",
               "--samples-per-shard", "40"]
        for lang, f in mono_files.items():
            cmd += ["--mono", f"{lang}={f}"]
        for lang in ("bo", "kk", "mn", "ug"):
            cmd += ["--parallel", f"zh-{lang}={par_files['zh']},{par_files[lang]}"]
        _run(cmd)

    prepare(root / "shards" / "train", mono, par)
    prepare(root / "shards" / "dev", dev, dev)
    config = {
        "model": {"path": str(root / "swcm"), "attn_implementation": "auto", "fused_lm_head_ce": True},
        "data": {"shards": str(root / "shards" / "train"), "dev_shards": str(root / "shards" / "dev"),
                 "alpha": 0.3, "mt_ratio": 0.3, "max_tokens": 1024, "shuffle_buffer": 64, "seed": 7},
        "train": {"max_steps": STEPS, "lr": 1e-3, "warmup_ratio": 0.1, "log_every": 4, "save_every": SAVE_EVERY,
                  "keep_last": 3, "dev_every": 8, "dev_batches": 2, "micro_batch_size": 4, "seed": 11,
                  # 0.25 MiB: the tied embedding (2 MB) and ZeRO's buckets cross gloo in pieces, as at full scale.
                  "gloo_piece_mb": 0.25},
    }
    (root / "run.json").write_text(json.dumps(config))
    return root


def _launch(assets, out, stage="zero0", *, resume=False, extra=(), node_rank=None, port=None, env=None,
            launcher=SWCM_LAUNCH, ranks=2, config=None):
    cmd = [*launcher]
    if node_rank is None:
        cmd += ["--num_gpus", str(ranks), "--master_port", str(port or _free_port())]
    else:
        cmd += ["--hostfile", ROOT / "launch" / "hostfile.example", "--no_ssh", "--node_rank", str(node_rank),
                "--master_addr", "127.0.0.1", "--master_port", str(port)]
    cmd += ["launch/pretrain.py", "--config", config or assets / "run.json", "--deepspeed_config",
            ROOT / "ds_configs" / f"{stage}.json", "--out", out, *extra]
    if resume:
        cmd.append("--resume")
    log = open(_log_path(out, resume, node_rank), "w")
    return subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env={**_env(), **(env or {})}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait(proc, timeout=400) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def _log_path(out, resume=False, node_rank=None) -> Path:
    return Path(f"{out}.{'resume' if resume else 'first'}.{node_rank}.log")


def _log(out, resume=False, node_rank=None) -> str:
    return _log_path(out, resume, node_rank).read_text()[-6000:]


def losses(out) -> dict[int, float]:
    """step -> loss from a run's metrics.jsonl (the last line for a step wins)."""
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def _complete_steps(out) -> list[int]:
    root = Path(out) / "checkpoints"
    return sorted(int(d.name.split("_")[1]) for d in root.iterdir() if (d / "COMPLETE").is_file())


@pytest.fixture(scope="session")
def reference_runs(assets):
    """Uninterrupted runs of STEPS steps under ZeRO 0, 2 and 3 (run one after another: 2 cores). ZeRO-1 partitions
    the optimizer state as ZeRO-2 does, without the gradients: its run is in `make test-extended`."""
    outs = {}
    for stage in ("zero0", "zero2", "zero3"):
        outs[stage] = _reference_run(assets, stage)
    return outs


def _reference_run(assets, stage: str) -> Path:
    out = assets / f"ref_{stage}"
    proc = _launch(assets, out, stage, launcher=(DS,) if stage == "zero2" else SWCM_LAUNCH)
    assert _wait(proc) == 0, _log(out)
    return out


def _rank_processes(launcher: subprocess.Popen) -> dict[int, psutil.Process]:
    found = {}
    for p in psutil.Process(launcher.pid).children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.NoSuchProcess:
            continue
        try:  # loader workers are forks of a rank, with the same command line: skip them
            parent_is_rank = any(c.startswith("--local_rank=") for c in p.parent().cmdline())
        except psutil.NoSuchProcess:
            continue
        if any(c.endswith("pretrain.py") for c in cmd) and not parent_is_rank:
            for c in cmd:
                if c.startswith("--local_rank="):
                    found[int(c.split("=")[1])] = p
    return found


def _wait_for_step(out, step, proc, timeout=300):
    deadline = time.time() + timeout
    path = Path(out) / "metrics.jsonl"
    while time.time() < deadline:
        if path.exists() and any(k >= step for k in losses(out)):
            return
        assert proc.poll() is None, f"run ended before step {step}: {_log(out)}"
        time.sleep(0.02)
    raise TimeoutError(f"step {step} not reached")


def test_zero_stages_give_the_same_losses_and_weights(reference_runs):
    ref = losses(reference_runs["zero0"])
    assert sorted(ref) == list(range(1, STEPS + 1))
    # attn_implementation "auto" resolves to SDPA on CPU tensors, and the run records what it resolved to
    run_config = json.loads((reference_runs["zero0"] / "config.json").read_text())
    assert run_config["attention"] == "sdpa" and run_config["lm_head"] == "fused-torch"
    assert "attention auto -> sdpa (cpu tensors)" in _log_path(reference_runs["zero0"]).read_text()
    assert ref[STEPS] < ref[1], "the demo model should learn in 24 steps"
    for stage in ("zero2", "zero3"):
        _assert_same_run(reference_runs["zero0"], reference_runs[stage], stage)


@pytest.mark.extended
def test_zero1_gives_the_same_losses_and_weights(assets, reference_runs):
    _assert_same_run(reference_runs["zero0"], _reference_run(assets, "zero1"), "zero1")


def _assert_same_run(zero0: Path, other_run: Path, stage: str) -> None:
    """`other_run` (a ZeRO stage above 0) has ZeRO-0's losses and, after STEPS steps, its weights."""
    from swcm.convert.to_hf import consolidated_state_dict

    ref, other = losses(zero0), losses(other_run)
    # fp32 weights: ZeRO's fp32 master is the model's own partition (no second copy), and still exact.
    log = _log_path(other_run).read_text()
    assert "fp32 master partition is the model's own" in log
    # ...and the collectives that ran in pieces gave the same numbers as whole ones (zero0 all-reduces only).
    assert "all-gathers and reduce-scatters above 0.25 MiB run in pieces" in log
    for step in ref:
        assert other[step] == pytest.approx(ref[step], rel=1e-4), (stage, step)
    weights0, weights = consolidated_state_dict(zero0), consolidated_state_dict(other_run)
    assert weights.keys() == weights0.keys()
    worst = max((weights[k].float() - weights0[k].float()).abs().max().item() for k in weights0)
    assert worst < 1e-4, (stage, worst)  # fp32 Adam after 24 steps: reduction order only


def test_deepspeeds_own_zero_to_fp32_works_on_a_run_without_a_tag(reference_runs, tmp_path):
    """`checkpoints/latest` names the newest complete checkpoint, so DeepSpeed's script needs no --tag."""
    import torch

    from swcm.convert.to_hf import consolidated_state_dict

    ckpts = reference_runs["zero3"] / "checkpoints"
    res = subprocess.run([PY, str(ckpts / "zero_to_fp32.py"), str(ckpts), str(tmp_path / "fp32")], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    theirs = torch.load(tmp_path / "fp32" / "pytorch_model.bin", weights_only=True)
    ours = consolidated_state_dict(reference_runs["zero3"])
    assert theirs.keys() >= ours.keys() - {"lm_head.weight"}
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs if k in ours)


def test_dropout_is_on_from_the_first_step(assets, reference_runs):
    """Same weights and data, another dropout seed: step 1's loss differs only if the model is in train mode
    (from_pretrained hands it over in eval mode)."""
    out = assets / "reseeded"
    proc = _launch(assets, out, "zero0", extra=("--max-steps", "1", "--set", "train.seed=12"))
    assert _wait(proc) == 0, _log(out)
    assert losses(out)[1] != pytest.approx(losses(reference_runs["zero0"])[1], abs=1e-6)


def test_resume_after_sigkill_on_one_rank_is_exact(assets, reference_runs):
    out, port = assets / "killed", _free_port()
    proc = _launch(assets, out, "zero2", launcher=(DS,), port=port)
    _wait_for_step(out, 6, proc)
    _rank_processes(proc)[1].send_signal(signal.SIGKILL)
    assert _wait(proc) != 0
    assert _shm_buffers(port) == []
    done = _complete_steps(out)
    assert done and max(done) < STEPS, done  # it really died mid-run, after at least one checkpoint
    proc = _launch(assets, out, "zero2", resume=True)
    assert _wait(proc) == 0, _log(out, resume=True)
    assert f"resumed from {out / 'checkpoints' / f'step_{max(done):08d}'}" in _log(out, resume=True)
    ref, got = losses(reference_runs["zero2"]), losses(out)
    for step in range(max(done) + 1, STEPS + 1):
        assert got[step] == pytest.approx(ref[step], abs=1e-6), step


def test_two_simulated_nodes_match_one_node(assets, reference_runs):
    out = assets / "two_nodes"
    port = _free_port()
    procs = [_launch(assets, out, "zero0", node_rank=r, port=port, launcher=(DS,)) for r in (0, 1)]
    for r, p in enumerate(procs):
        assert _wait(p) == 0, _log(out, node_rank=r)
    ref, got = losses(reference_runs["zero0"]), losses(out)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-6), step


def test_tensorboard_holds_every_scalar_at_the_right_steps(reference_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = reference_runs["zero0"]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    per_step = {"train/loss", "train/lr", "train/grad_norm"}
    per_log = {"train/loss_dae", "train/loss_mt", "perf/tokens_per_s", "perf/samples_per_s", "perf/mfu",
               "memory/peak_gb_per_rank"}
    assert per_step | per_log | {"dev/loss"} <= tags, sorted(tags)
    langs = {t for t in tags if t.startswith("train/loss_lang_")}
    assert {"train/loss_lang_bo", "train/loss_lang_zh"} <= langs, sorted(tags)
    for tag in per_step:
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, STEPS + 1)), tag
    for tag in per_log:
        assert [e.step for e in acc.Scalars(tag)] == list(range(4, STEPS + 1, 4)), tag
    assert [e.step for e in acc.Scalars("dev/loss")] == [8, 16, 24]
    ref = losses(out)
    # TensorBoard stores float32: equal to the logged loss within float32's precision (rounding both to 5 decimals
    # failed whenever a loss sat on a rounding boundary, e.g. 7.083695).
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([ref[s] for s in range(1, STEPS + 1)],
                                                                         rel=1e-6)
    mfu = [e.value for e in acc.Scalars("perf/mfu")]
    assert all(0 < m < 1 for m in mfu), mfu
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert max(lrs) == pytest.approx(1e-3, rel=0.2) and lrs[-1] < lrs[len(lrs) // 2]


# Through the real command line; tests/test_pretrain_errors.py checks the same refusals in process, so two of the
# four run in `make test`.
@pytest.mark.parametrize("case", [pytest.param("missing_shards", marks=pytest.mark.extended), "tokenizer_mismatch",
                                  pytest.param("unknown_key", marks=pytest.mark.extended), "bad_batch"])
def test_bad_input_fails_before_training(assets, tmp_path, case):
    cfg = json.loads((assets / "run.json").read_text())
    ds = ROOT / "ds_configs" / "zero0.json"
    if case == "missing_shards":
        cfg["data"]["shards"] = str(tmp_path / "nowhere")
        expect = "nowhere"
    elif case == "tokenizer_mismatch":
        from swcm.assets import build_demo_tokenizer
        from swcm.tokenization import add_language_tags

        tok = build_demo_tokenizer(tmp_path / "other_tokenizer", vocab_size=2500)  # not the model's tokenizer
        add_language_tags(tok)
        tok.save_pretrained(str(tmp_path / "other_tokenizer"))
        other = tmp_path / "other_shards"
        _run([PY, "launch/prepare_data.py", "--tokenizer", tmp_path / "other_tokenizer", "--out", other,
              "--mono", f"zh={assets / 'text' / 'zh.txt'}"])
        cfg["data"]["shards"] = str(other)
        expect = "fingerprint"
    elif case == "unknown_key":
        cfg["train"]["learning_rate"] = 1.0
        expect = "unknown key 'learning_rate'"
    else:
        cfg["train"].pop("micro_batch_size")  # else the run config's batch size replaces the JSON's
        ds = tmp_path / "ds.json"
        ds.write_text(json.dumps({"train_batch_size": 7, "train_micro_batch_size_per_gpu": 2}))
        expect = "train_batch_size=7"
    run_cfg = tmp_path / "run.json"
    run_cfg.write_text(json.dumps(cfg))
    res = subprocess.run([PY, "launch/pretrain.py", "--config", str(run_cfg), "--deepspeed_config", str(ds),
                          "--out", str(tmp_path / "run")], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0], res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


def _session_processes(sid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                found.append(p)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def test_a_failed_save_ends_the_job_and_resume_skips_a_damaged_checkpoint(assets, reference_runs):
    """The disk fills up during the save of step 12 (tests/fault_injection): the job ends within 30 s with one
    error line, no process left and DeepSpeed's /dev/shm buffers gone; then the newest complete checkpoint (8) is
    damaged too, and --resume reports it and continues from step 4, reproducing the uninterrupted losses."""
    out, port = assets / "full_disk", _free_port()
    proc = _launch(assets, out, "zero2", port=port, env={"PYTHONPATH": str(ROOT / "tests" / "fault_injection"),
                                                         "SWCM_TEST_FULL_DISK_AT": "step_00000012"})
    _wait_for_step(out, 12, proc)
    failed_at = time.time()
    assert _wait(proc, timeout=120) != 0
    assert time.time() - failed_at < 30
    log = _log_path(out).read_text()
    errors = [ln for ln in log.splitlines() if ln.startswith("error:")]
    partial = out / "checkpoints" / "step_00000012"
    assert len(errors) == 1 and errors[0].startswith(f"error: {partial}") and "no space left on device" in errors[0] \
        and "(rank " in errors[0], errors
    assert "Traceback" not in log, log[-3000:]   # on no rank: the tracebacks are in RUN/errors/
    kept = [p.read_text() for p in sorted((out / "errors").iterdir())]   # the failed rank's, and any other's
    assert any("No space left on device" in text for text in kept) and all(kept), kept
    time.sleep(1)
    assert _session_processes(proc.pid) == [], "a process of the job outlived it"
    assert _shm_buffers(port) == []
    assert _complete_steps(out) == [4, 8] and not partial.exists()   # the failed save removed what it had written

    victim = out / "checkpoints" / "step_00000008" / "mp_rank_00_model_states.pt"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    proc = _launch(assets, out, "zero2", resume=True)
    assert _wait(proc) == 0, _log(out, resume=True)
    resumed = _log(out, resume=True)
    assert f"skipping damaged checkpoint {out / 'checkpoints' / 'step_00000008'}" in resumed
    assert f"resumed from {out / 'checkpoints' / 'step_00000004'}" in resumed
    ref, got = losses(reference_runs["zero2"]), losses(out)
    for step in range(5, STEPS + 1):
        assert got[step] == pytest.approx(ref[step], abs=1e-6), step
    assert (out / "checkpoints" / "latest").read_text() == f"step_{STEPS:08d}"


def test_preemption_signals_save_exit_zero_and_resume_exactly(assets, reference_runs):
    """Under swcm-launch (DeepSpeed's own launcher cannot: see swcm/launcher.py), SIGTERM to the job's whole process
    group, then Ctrl-C's SIGINT to the group, then SIGTERM to the launcher alone: each time every rank finishes its
    step and saves, the launcher exits 0 after its ranks and nothing of the job is left; the runs resumed from the
    first two saves reproduce the uninterrupted losses (ZeRO-3: its saves and loads go through the shared fp32 master;
    the third save is the same code, loaded by the other resume tests)."""
    out = assets / "preempted"
    stops = [(6, lambda p: os.killpg(p.pid, signal.SIGTERM)), (12, lambda p: os.killpg(p.pid, signal.SIGINT)),
             (18, lambda p: p.send_signal(signal.SIGTERM))]
    for n, (at_step, send) in enumerate(stops):
        proc = _launch(assets, out, "zero3", resume=n > 0, launcher=SWCM_LAUNCH)
        _wait_for_step(out, at_step, proc)
        send(proc)
        assert _wait(proc) == 0, _log(out, resume=n > 0)
        assert _session_processes(proc.pid) == [], f"stop {n}: a process outlived the launcher"
        stopped = max(losses(out))
        assert stopped < STEPS and _complete_steps(out)[-1] == stopped, (n, stopped, _complete_steps(out))
        assert (out / "checkpoints" / "latest").read_text() == f"step_{stopped:08d}"
    ref, got = losses(reference_runs["zero3"]), losses(out)
    assert sorted(got) == list(range(1, stopped + 1)) and stopped >= stops[-1][0]
    for step in range(1, stopped + 1):
        assert got[step] == pytest.approx(ref[step], abs=1e-6), step


def _alone_env() -> dict:
    """The environment of a process started without any launcher."""
    env = _env()
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _alone(assets, out, *extra, log_name="alone") -> subprocess.Popen:
    """`python launch/pretrain.py` with no launcher (ZeRO-0), its output in OUT.<log_name>.log."""
    log = open(f"{out}.{log_name}.log", "w")
    return subprocess.Popen([PY, "launch/pretrain.py", "--config", str(assets / "run.json"), "--deepspeed_config",
                             str(ROOT / "ds_configs" / "zero0.json"), "--out", str(out), *map(str, extra)],
                            cwd=ROOT, env=_alone_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.parametrize("where", ["model", "parent", "child", "foreign"])
def test_a_run_dir_over_an_input_or_in_a_foreign_dir_is_refused(assets, tmp_path, where, monkeypatch, capsys):
    """--out is the model, a parent of the model and the shards, inside the model, or a folder of other files: one
    error line before anything is written, the inputs byte-identical (main() in this process: no process group)."""
    sys.path.insert(0, str(ROOT / "launch"))
    import pretrain

    monkeypatch.setenv("RANK", "0")   # as a launcher would: no single-process defaults in this test process
    monkeypatch.setenv("WORLD_SIZE", "1")
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("years of work")
    out = {"model": assets / "swcm", "parent": assets, "child": assets / "swcm" / "run",
           "foreign": tmp_path / "thesis"}[where]
    inputs = [assets / "swcm", assets / "shards", tmp_path / "thesis"]
    before = [_snapshot(p) for p in inputs]
    capsys.readouterr()
    assert pretrain.main(["--config", str(assets / "run.json"), "--deepspeed_config",
                          str(ROOT / "ds_configs" / "zero0.json"), "--out", str(out), "--max-steps", "2"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    expect = {"model": "the input", "parent": "contains the input", "child": "lies inside the input",
              "foreign": "was not written by swcm (it holds chapter1.tex)"}[where]
    assert len(errors) == 1 and errors[0].startswith(f"error: --out {out} ") and expect in errors[0], errors
    assert [_snapshot(p) for p in inputs] == before


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


def test_without_a_launcher_one_process_trains_and_saves(assets):
    out = assets / "alone"
    proc = _alone(assets, out, "--max-steps", 2)
    assert _wait(proc) == 0, Path(f"{out}.alone.log").read_text()[-3000:]
    log = Path(f"{out}.alone.log").read_text()
    assert "no launcher: running as one process (world size 1)" in log
    assert sorted(losses(out)) == [1, 2] and _complete_steps(out) == [2]
    assert json.loads((out / "config.json").read_text())["world_size"] == 1


def test_one_writer_per_run_dir_and_a_killed_writer_does_not_block(assets):
    """A second job on a running job's --out fails at once naming the first (its pid); after a SIGKILL of the
    first, a new job on that --out starts, and (SIGTERM) saves and exits 0."""
    out = assets / "one_writer"
    first = _alone(assets, out, "--max-steps", 10 ** 6, log_name="first")
    try:
        _wait_for_step(out, SAVE_EVERY + 1, first)
        started = time.monotonic()
        second = subprocess.run([PY, "launch/pretrain.py", "--config", str(assets / "run.json"), "--deepspeed_config",
                                 str(ROOT / "ds_configs" / "zero0.json"), "--out", str(out), "--resume"], cwd=ROOT,
                                env=_alone_env(), capture_output=True, text=True, timeout=120)
        took = time.monotonic() - started   # mostly importing torch and DeepSpeed
        errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
        assert second.returncode == 2 and len(errors) == 1, second.stderr[-3000:]
        assert f"--out {out} is in use by another job (pid {first.pid} " in errors[0], errors
        assert took < 60 and first.poll() is None
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    third = _alone(assets, out, "--max-steps", 10 ** 6, "--resume", log_name="third")
    try:
        _wait_for_step(out, max(losses(out)) + 1, third)
        os.killpg(third.pid, signal.SIGTERM)
        assert _wait(third) == 0, Path(f"{out}.third.log").read_text()[-3000:]
    finally:
        if third.poll() is None:
            os.killpg(third.pid, signal.SIGKILL)
    log = Path(f"{out}.third.log").read_text()
    assert f"resumed from {out / 'checkpoints'}" in log and "in use" not in log
    assert _complete_steps(out)[-1] == max(losses(out))


# -- elastic resume: another world size or ZeRO stage -------------------------------------------------------------

ELASTIC_STEPS = 8


@pytest.fixture(scope="session")
def elastic(assets):
    """A dropout-free copy of the model (dropout masks are drawn per rank, so they cannot follow a change of world
    size), steps of 6 micro-batches of 2 samples (1, 2, 3 and 6 ranks can share them), a checkpoint every step, the
    sample log on, and the uninterrupted ZeRO-2 run at 2 ranks."""
    root = assets / "elastic"
    shutil.copytree(assets / "swcm", root / "swcm")
    model = json.loads((root / "swcm" / "config.json").read_text())
    model.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (root / "swcm" / "config.json").write_text(json.dumps(model))
    run = json.loads((assets / "run.json").read_text())
    run["model"]["path"] = str(root / "swcm")
    run["train"].update(max_steps=ELASTIC_STEPS, micro_batch_size=2, global_batch_size=12, save_every=1,
                        keep_last=ELASTIC_STEPS, dev_every=0, log_every=1, sample_log=True)
    (root / "run.json").write_text(json.dumps(run))
    ref = root / "ref"
    proc = _launch(assets, ref, "zero2", config=root / "run.json")
    assert _wait(proc) == 0, _log(ref)
    return root, ref


def _universal_state(run, step, out):
    """{(param, key): tensor} of a run's checkpoint, through a universal conversion (fp32 weights, Adam moments)."""
    import torch

    _run([PY, "launch/convert_checkpoint.py", "universal", "--run", run, "--step", str(step), "--out", out])
    zero = out / f"step_{step:08d}" / "zero"
    # ZeRO-3 sources store each tensor flat; a tied alias (lm_head.weight) has its weights only, and not always.
    return {(d.name, key): torch.load(d / f"{key}.pt", weights_only=True)["param"].flatten()
            for d in zero.iterdir() if d.is_dir() and d.name != "lm_head.weight"
            for key in ("fp32", "exp_avg", "exp_avg_sq") if (d / f"{key}.pt").exists()}


def _step_samples(out) -> dict[int, list[str]]:
    steps: dict[int, list[str]] = {}
    for path in (Path(out) / "samples").glob("rank*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            steps.setdefault(row["step"], []).extend(row["ids"])
    return {s: sorted(ids) for s, ids in steps.items()}


# All four cells in `make test-extended` only: the 2 -> 1 -> 3 chain below (in `make test`) already resumes a ZeRO-2
# run at ZeRO-1 on 1 rank and at ZeRO-3 on 3 ranks; these re-check that on other layouts, from a universal checkpoint
# made by `convert_checkpoint.py universal` (which `make test` runs in the refusals below).
@pytest.mark.extended
@pytest.mark.parametrize("stage,ranks", [("zero1", 1), ("zero3", 1), ("zero1", 2), ("zero3", 2)])
def test_universal_checkpoint_resumes_at_another_world_size_and_stage(assets, elastic, stage, ranks):
    """A ZeRO-2 run at 2 ranks, converted at step 4 with `convert_checkpoint.py universal`, resumed under another
    stage at 1 or 2 ranks: the next losses equal the uninterrupted run's (1e-5 relative, fp32), and the weights and
    Adam moments after the resume step match (1e-6)."""
    root, ref = elastic
    universal = root / "universal4"
    if not universal.exists():
        _run([PY, "launch/convert_checkpoint.py", "universal", "--run", ref, "--step", "4", "--out", universal])
    out = root / f"from4_{stage}_{ranks}"
    proc = _launch(assets, out, stage, ranks=ranks, launcher=SWCM_LAUNCH, config=root / "run.json",
                   extra=("--resume-from", universal))
    assert _wait(proc) == 0, _log(out)
    want, got = losses(ref), losses(out)
    assert sorted(got) == list(range(5, ELASTIC_STEPS + 1))
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-5), step
    theirs, ours = _universal_state(ref, 5, root / f"ref5_{stage}_{ranks}"), _universal_state(out, 5, out / "u5")
    assert theirs.keys() == ours.keys()
    worst = max((ours[k] - theirs[k]).abs().max().item() for k in theirs)
    assert worst < 1e-6, worst


def test_world_size_2_then_1_then_3_keeps_every_step(assets, elastic):
    """Stopped by SIGTERM at 2 ranks (ZeRO-2), resumed with --resume at 1 rank (ZeRO-1), stopped again, resumed at
    3 ranks (ZeRO-3): every step trains on exactly the samples of the uninterrupted run (so none lost or read twice)
    with the same loss, and the step count, lr schedule and TensorBoard steps continue."""
    root, ref = elastic
    out = root / "chain"
    layouts = [(2, "zero2", 2), (1, "zero1", 4), (3, "zero3", None)]
    for n, (ranks, stage, stop_after) in enumerate(layouts):
        proc = _launch(assets, out, stage, resume=n > 0, ranks=ranks, launcher=SWCM_LAUNCH, config=root / "run.json")
        if stop_after is not None:
            _wait_for_step(out, stop_after, proc)
            os.killpg(proc.pid, signal.SIGTERM)
        assert _wait(proc) == 0, _log(out, resume=n > 0)
    want, got = losses(ref), losses(out)
    assert sorted(got) == list(range(1, ELASTIC_STEPS + 1))
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-5), step
    assert _step_samples(out) == _step_samples(ref)
    lrs = {json.loads(x)["step"]: json.loads(x)["lr"] for x in (out / "metrics.jsonl").read_text().splitlines()}
    assert lrs == {json.loads(x)["step"]: json.loads(x)["lr"] for x in (ref / "metrics.jsonl").read_text().splitlines()}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, ELASTIC_STEPS + 1))
    assert list((out / "universal").iterdir()), "the checkpoints of other layouts were converted on the way"


@pytest.mark.parametrize("case", ["not_a_checkpoint", "other_model", "other_tokenizer", "zero0", "zero0_source",
                                  "uneven_world"])
def test_unusable_resume_sources_fail_before_the_process_group(assets, elastic, reference_runs, tmp_path, case,
                                                              monkeypatch, capsys):
    """One error line naming what is wrong, nothing written (main() in this process: it must not get as far as a
    process group)."""
    root, ref = elastic
    universal = root / "universal4"
    if not universal.exists():
        _run([PY, "launch/convert_checkpoint.py", "universal", "--run", ref, "--step", "4", "--out", universal])
    source, stage, world, extra = universal, "zero1", "1", []
    if case == "not_a_checkpoint":
        source, expect = tmp_path / "empty", "neither a universal checkpoint"
        source.mkdir()
    elif case in ("other_model", "other_tokenizer"):
        source = tmp_path / "u"
        shutil.copytree(universal, source, symlinks=True)
        if case == "other_model":
            cfg = json.loads((source / "model" / "config.json").read_text())
            cfg["normal_layer_every"] = 1
            (source / "model" / "config.json").write_text(json.dumps(cfg))
            expect = "the checkpoint is of another model (normal_layer_every"
        else:
            from swcm.assets import build_demo_tokenizer

            build_demo_tokenizer(tmp_path / "tok", vocab_size=2500)
            for f in (tmp_path / "tok").iterdir():
                shutil.copy(f, source / "model" / f.name)
            expect = "trained with another tokenizer"
    elif case == "zero0":
        stage, expect = "zero0", "only into ZeRO stages 1-3"
    elif case == "zero0_source":
        source, expect = reference_runs["zero0"], "a ZeRO-0 checkpoint (at 2 ranks) has no ZeRO optimizer partitions"
    else:   # the run config leaves the global batch to the checkpoint, whose 6 micro-batches 4 ranks cannot share
        world, expect = "4", "4 ranks cannot share evenly"
        extra = ["--set", "train.global_batch_size=0"]
    sys.path.insert(0, str(ROOT / "launch"))
    import pretrain

    monkeypatch.setenv("RANK", "0")   # rank 0 of a launched job: no single-process defaults in this test process
    monkeypatch.setenv("WORLD_SIZE", world)
    capsys.readouterr()
    code = pretrain.main(["--config", str(root / "run.json"), "--deepspeed_config",
                          str(ROOT / "ds_configs" / f"{stage}.json"), "--out", str(tmp_path / "run"), "--resume-from",
                          str(source), *extra])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and expect in errors[0], err[-3000:]
    assert "Traceback" not in err and not (tmp_path / "run").exists()
