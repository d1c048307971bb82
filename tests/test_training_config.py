"""Config and DeepSpeed-JSON checks that must fail before any process group or model exists."""

import json

import pytest

from swcm.config import ConfigError, load_config
from swcm.training.ds_config import load_ds_config, micro_batch_size
from swcm.training.schedule import warmup_linear_decay

ROOT_CONFIGS = ["zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"]


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


@pytest.mark.parametrize("name", ROOT_CONFIGS)
def test_shipped_ds_configs_differ_only_in_zero_section(name):
    base = json.load(open("ds_configs/zero0.json"))
    cfg = json.load(open(f"ds_configs/{name}.json"))
    stage = int(name[4])
    assert cfg["zero_optimization"]["stage"] == stage
    strip = lambda c: {k: v for k, v in c.items() if k not in ("zero_optimization", "zero_force_ds_cpu_optimizer")}
    assert strip(cfg) == strip(base)
    resolved = load_ds_config(f"ds_configs/{name}.json", world_size=2, bf16_supported=False)
    assert resolved["bf16"]["enabled"] is False
    assert load_ds_config(f"ds_configs/{name}.json", world_size=2, bf16_supported=True)["bf16"]["enabled"] is True


def test_batch_sizes_must_fit_world_size(tmp_path):
    p = _write(tmp_path, "ds.json", {"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4,
                                      "gradient_accumulation_steps": 2})
    with pytest.raises(ConfigError, match=r"ds.json: train_batch_size=30 .* world size \(2\) = 16"):
        load_ds_config(p, world_size=2, bf16_supported=False)
    assert load_ds_config(p, world_size=2, bf16_supported=False, micro_batch=5, global_batch=30)[
        "gradient_accumulation_steps"] == 3
    with pytest.raises(ConfigError, match="global_batch_size=30 is not a multiple"):
        load_ds_config(p, world_size=4, bf16_supported=False, micro_batch=5, global_batch=30)
    q = _write(tmp_path, "ds2.json", {"train_batch_size": 24, "gradient_accumulation_steps": 3})
    assert micro_batch_size(load_ds_config(q, world_size=2, bf16_supported=False), 2) == 4
    with pytest.raises(ConfigError, match="not divisible"):
        load_ds_config(q, world_size=5, bf16_supported=False)


@pytest.mark.parametrize("content,match", [
    (None, "DeepSpeed config not found"),
    ("{not json", "not valid JSON"),
    ({"train_micro_batch_size_per_gpu": 0}, "must be a positive integer"),
    ({"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 4}}, "stage must be 0, 1, 2 or 3"),
    ({"train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": True}, "fp16": {"enabled": True}}, "both enabled"),
])
def test_bad_ds_config_is_named(tmp_path, content, match):
    p = tmp_path / "missing.json" if content is None else _write(tmp_path, "bad.json", content)
    with pytest.raises(ConfigError, match=match) as e:
        load_ds_config(p, world_size=1, bf16_supported=False)
    assert p.name in str(e.value)


def test_run_config_errors_name_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.json")
    p = _write(tmp_path, "run.json", {"train": {"max_stepz": 3}})
    with pytest.raises(ConfigError, match=r"run.json: train: unknown key 'max_stepz'"):
        load_config(p)
    p = _write(tmp_path, "run2.json", {"data": {"alpha": "high"}})
    with pytest.raises(ConfigError, match=r"data.alpha: expected a number"):
        load_config(p)
    cfg = load_config("configs/demo.json", ["data.alpha=1.0", "train.betas=[0.9,0.95]", "model.path=/x/y"])
    assert (cfg.data.alpha, cfg.train.betas, cfg.model.path) == (1.0, (0.9, 0.95), "/x/y")
    assert load_config("configs/xlm-swcm-base.json").train.global_batch_size == 600


def _lrs(make_schedule, steps, lr=2.0, state=None):
    import torch

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_schedule(opt)
    if state:
        sched.load_state_dict(state)   # the scheduler's own state only, as a resume on another layout may have
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs, sched.state_dict()


@pytest.mark.parametrize("total,ratio", [(100, 0.1), (24, 0.1), (10, 0.0)])
def test_warmup_linear_decay_schedule_and_its_resume(total, ratio):
    """The k-th step's lr is k / w during w warmup steps, then falls linearly to 0 at the last step; a schedule
    restored from its state_dict continues exactly."""
    w = round(total * ratio)
    expected = [2.0 * (k / w if k < w else (total - k) / (total - w)) for k in range(total)]
    make = lambda opt: warmup_linear_decay(opt, total, ratio)  # noqa: E731
    assert _lrs(make, total)[0] == pytest.approx(expected, abs=1e-12)
    first, state = _lrs(make, total // 2)
    rest, _ = _lrs(make, total - total // 2, state=state)
    assert first + rest == pytest.approx(expected, abs=1e-12)


def test_torch_chainable_schedule_does_not_resume_from_its_own_state():
    """Why swcm/training/schedule.py is not torch's LinearLR + SequentialLR: their lr lives in the optimizer."""
    from torch.optim.lr_scheduler import LinearLR, SequentialLR

    def make(opt):
        return SequentialLR(opt, [LinearLR(opt, 0.1, 1.0, 9), LinearLR(opt, 1.0, 0.0, 90)], milestones=[10])

    whole, _ = _lrs(make, 100)
    first, state = _lrs(make, 50)
    rest, _ = _lrs(make, 50, state=state)
    assert first + rest != pytest.approx(whole, abs=1e-6)


@pytest.mark.parametrize("override,message", [
    ("train.lr=-0.001", "train.lr: expected > 0, got -0.001"),
    ("data.alpha=-1", "data.alpha: expected >= 0, got -1.0"),
    ("data.mt_ratio=2", "data.mt_ratio: expected >= 0 and <= 1, got 2.0"),
    ("train.max_steps=0", "train.max_steps: expected >= 1 and <= 1e+09, got 0"),
    ("train.betas=[0.9,1.5]", "train.betas: expected each value >= 0 and < 1, got (0.9, 1.5)"),
    ("data.num_workers=-1", "data.num_workers: expected >= 0, got -1"),
    ("model.attn_implementation=flash", "model.attn_implementation: expected one of auto|eager|sdpa|triton, got 'flash'"),
])
def test_values_are_checked_by_the_config_types(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("configs/demo.json", [override])
    assert str(e.value) == f"configs/demo.json: {message}"
    assert "\n" not in str(e.value)


def test_config_types_check_values_built_in_python_too():
    from swcm.data.config import DataConfig

    with pytest.raises(ConfigError, match=r"^max_tokens: expected >= 1, got 0$"):
        DataConfig(max_tokens=0)
