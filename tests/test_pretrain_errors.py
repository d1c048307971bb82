"""Bad input to launch/pretrain.py that the config types or the trainer's checks refuse before any process group or
model exists: one `error:` line, exit 2, nothing written; `--resume` with nothing to resume says so."""

import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))

import pretrain  # noqa: E402

NTREX = ROOT / "data" / "demo" / "parallel" / "ntrex128" / "ntrex128"


@pytest.fixture(scope="module")
def setup(tiny_xlmr_dir, tmp_path_factory):
    from swcm.convert.from_encoder import convert_from_encoder
    from swcm.data.prepare import prepare

    root = tmp_path_factory.mktemp("pretrain_err")
    model = convert_from_encoder(tiny_xlmr_dir, root / "swcm", normal_layer_every=1)
    prepare(model, root / "shards", mono=[("zh", f"{NTREX}.dev.zh")], samples_per_shard=100, show_progress=False)
    config = root / "run.json"
    config.write_text(f'{{"model": {{"path": "{model}"}}, "data": {{"shards": "{root / "shards"}"}}, '
                      '"train": {"max_steps": 2, "micro_batch_size": 2}}')
    return root, config


CASES = {
    "negative lr": (["--set", "train.lr=-0.001"], "train.lr: expected > 0, got -0.001"),
    "negative alpha": (["--set", "data.alpha=-1"], "data.alpha: expected >= 0, got -1.0"),
    "mt_ratio over 1": (["--set", "data.mt_ratio=2"], "data.mt_ratio: expected >= 0 and <= 1, got 2.0"),
    "zero steps": (["--max-steps", "0"], "train.max_steps: expected >= 1, got 0"),
    "out is a file": (["--out", "{file}"], "is a file, expected a run directory"),
    "out not writable": (["--out", "/proc/swcm-run"], "--out /proc/swcm-run: cannot write in /proc"),
    "model is the encoder": (["--set", "model.path={xlmr}"], "model.path: {xlmr}/config.json: not an SWCM model"),
    "no model": (["--set", "model.path={tmp}/none"], "model.path: {tmp}/none: model directory not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_before_any_work(setup, case, tiny_xlmr_dir, tmp_path, capsys):
    root, config = setup
    extra, expected = CASES[case]
    (tmp_path / "a_file").write_text("x")
    paths = {"{file}": str(tmp_path / "a_file"), "{xlmr}": str(tiny_xlmr_dir), "{tmp}": str(tmp_path)}
    for key, value in paths.items():
        extra, expected = [a.replace(key, value) for a in extra], expected.replace(key, value)
    out = ["--out", str(tmp_path / "run")] if "--out" not in extra else []
    code = pretrain.main(["--config", str(config), "--deepspeed_config", str(ROOT / "ds_configs" / "zero0.json"),
                          *out, *extra])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "run").exists() and (tmp_path / "a_file").read_text() == "x"


def test_resume_with_nothing_to_resume_warns(setup, tmp_path, caplog):
    from swcm.config import load_config
    from swcm.training.pretrain_task import PretrainTask
    from swcm.training.trainer import Trainer

    root, config = setup
    cfg = load_config(config)
    with caplog.at_level(logging.WARNING):
        Trainer(cfg, str(ROOT / "ds_configs" / "zero0.json"), str(tmp_path / "run"), task=PretrainTask(cfg),
                resume=True)
    assert "--resume: no complete checkpoint" in caplog.text and "starting from step 0" in caplog.text


@pytest.mark.parametrize("extra,expected", [
    (["--set", "model.attn_implementation=triton"], "model.attn_implementation: 'triton' cannot run here: hidden"),
    ([], "model.fused_lm_head_ce: swcm's kernel module 'lm_head_ce' cannot be imported: hidden"),
])
def test_kernel_paths_that_cannot_load_are_refused(setup, extra, expected, tmp_path, capsys, monkeypatch):
    import swcm.modeling_swcm as modeling

    root, config = setup
    monkeypatch.setattr(modeling, "_load_kernel", lambda name: (None, "hidden by the test"))
    code = pretrain.main(["--config", str(config), "--deepspeed_config", str(ROOT / "ds_configs" / "zero0.json"),
                          "--out", str(tmp_path / "run"), *extra])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "run").exists()
