"""Bad input to launch/finetune.py: one `error:` line naming the file (and line), exit 2, before any process group
or model exists, and nothing written in --out."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))

import finetune  # noqa: E402

GOOD = {"source": "你好", "target": "བཀྲ་ཤིས་བདེ་ལེགས།", "src_lang": "zh", "tgt_lang": "bo"}


@pytest.fixture(scope="module")
def swcm_dir(tiny_xlmr_dir, tmp_path_factory):
    from swcm.convert.from_encoder import convert_from_encoder

    return convert_from_encoder(tiny_xlmr_dir, tmp_path_factory.mktemp("ft_err") / "swcm", normal_layer_every=1)


def _jsonl(path: Path, lines) -> Path:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln, ensure_ascii=False)) + "\n"
                            for ln in lines), encoding="utf-8")
    return path


def _config(tmp_path, **model) -> Path:
    train = _jsonl(tmp_path / "train.jsonl", [GOOD] * 3)
    cfg = {"model": model, "data": {"train": str(train)}, "train": {"max_steps": 2, "micro_batch_size": 2}}
    path = tmp_path / "ft.json"
    path.write_text(json.dumps(cfg))
    return path


CASES = {
    "missing field": ([{"source": "x", "src_lang": "zh", "tgt_lang": "bo"}], "train.jsonl:1: missing field 'target'"),
    "number as a side": ([GOOD, {**GOOD, "target": 7}], "train.jsonl:2: field 'target' must be a string, got a number"),
    "unknown language": ([GOOD, GOOD, {**GOOD, "tgt_lang": "xx"}], "train.jsonl:3: tgt_lang 'xx' is not a language"),
    "empty file": ([], "train.jsonl: no examples"),
    "not json": (["{oops"], "train.jsonl:1: not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_train_lines_are_named_by_file_and_line(case, swcm_dir, tmp_path, capsys):
    lines, expected = CASES[case]
    config = _config(tmp_path, path=str(swcm_dir))
    _jsonl(tmp_path / "train.jsonl", lines)
    code = finetune.main(["--config", str(config), "--deepspeed_config", str(ROOT / "ds_configs" / "zero0.json"),
                          "--out", str(tmp_path / "run")])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["xlmr_dir", "no_checkpoint_run", "both", "neither", "dev_needed"])
def test_bad_model_sources_fail_before_any_work(case, swcm_dir, tiny_xlmr_dir, tmp_path, capsys):
    overrides = []
    if case == "xlmr_dir":
        model, expected = {"path": str(tiny_xlmr_dir)}, "not an SWCM model directory (model_type is 'xlm-roberta'"
    elif case == "no_checkpoint_run":
        (tmp_path / "pre" / "checkpoints" / "step_00000004").mkdir(parents=True)   # a save that never completed
        model, expected = {"init_run": str(tmp_path / "pre")}, "has no complete checkpoint"
    elif case == "both":
        model, expected = {"path": str(swcm_dir), "init_run": str(tmp_path)}, "set exactly one"
    elif case == "neither":
        model, expected = {}, "set exactly one"
    else:
        model, expected = {"path": str(swcm_dir)}, "eval.metric 'chrf' needs data.dev"
        overrides = ["--set", "train.dev_every=1"]
    code = finetune.main(["--config", str(_config(tmp_path, **model)), "--deepspeed_config",
                          str(ROOT / "ds_configs" / "zero0.json"), "--out", str(tmp_path / "run"), *overrides])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "run").exists()


def test_the_command_line_gives_one_error_line_and_no_traceback(swcm_dir, tmp_path):
    config = _config(tmp_path, path=str(swcm_dir))
    _jsonl(tmp_path / "train.jsonl", [{**GOOD, "src_lang": "qq"}])
    res = subprocess.run([sys.executable, "launch/finetune.py", "--config", str(config), "--deepspeed_config",
                          "ds_configs/zero0.json", "--out", str(tmp_path / "run"), "--set", "train.lr=0.5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: {tmp_path / 'train.jsonl'}:1: src_lang 'qq' is not a language of the model (one of bo, kk, mn, ug, zh)"]
    assert not (tmp_path / "run").exists()
