"""Run configs: one JSON file with `model`, `data` and `train` sections (fine-tuning adds `eval`), plus
`--set key=value` overrides.

Every key is checked: an unknown key, a wrong type, a value out of range or an unreadable file is a `ConfigError`
naming the file and the dotted key, raised before any work starts (and before any process group exists).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from swcm.config_checks import Checked, ConfigError, bounded
from swcm.data.config import DataConfig

__all__ = ["ConfigError", "EvalConfig", "FinetuneDataConfig", "FinetuneRunConfig", "ModelConfig", "RunConfig",
           "TrainConfig", "TrainFile", "load_config"]


@dataclass
class ModelConfig(Checked):
    path: str = ""                      # an SWCM HF dir (from `convert_checkpoint.py from-encoder`)
    attn_implementation: Literal["auto", "eager", "sdpa", "triton"] = "auto"   # auto: Triton on CUDA, else SDPA
    fused_lm_head_ce: bool = True       # chunked LM head + cross-entropy (never holds N x V logits)
    gradient_checkpointing: bool = False


@dataclass
class TrainConfig(Checked):
    max_steps: int = bounded(1000, ge=1, le=10 ** 9)   # more than any run takes (a year at 30 steps/s): a typo
    lr: float = bounded(1e-4, gt=0)                    # paper: AdamW, peak 1e-4
    warmup_ratio: float = bounded(0.1, ge=0, le=1)     # paper: linear warmup over 10% of the steps, linear decay
    weight_decay: float = bounded(0.01, ge=0)
    betas: tuple[float, float] = bounded((0.9, 0.98), ge=0, lt=1)
    eps: float = bounded(1e-6, gt=0)
    label_smoothing: float = bounded(0.0, ge=0, lt=1)
    micro_batch_size: int = bounded(0, ge=0)    # samples per rank per micro-step; 0 = the DeepSpeed JSON's value
    global_batch_size: int = bounded(0, ge=0)   # samples per optimizer step over all ranks; 0 = the DeepSpeed JSON's
    seed: int = bounded(1234, ge=0)
    log_every: int = bounded(10, ge=1)
    save_every: int = bounded(200, ge=1)
    keep_last: int = bounded(3, ge=1)
    dev_every: int = bounded(200, ge=0)         # 0 = no dev evaluation
    dev_batches: int = bounded(8, ge=1)
    max_nonfinite_in_a_row: int = bounded(5, ge=1)   # a run whose loss stays NaN/inf this many steps stops
    gloo_piece_mb: float = bounded(32.0, ge=0)  # gloo (CPU ranks): collectives above this size run in pieces; 0 = off
    sample_log: bool = False            # each rank writes the sample ids of every step to RUN/samples/rank{R}.jsonl


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------- fine-tuning


@dataclass
class FinetuneModelConfig(ModelConfig):
    init_run: str = ""                  # a pretraining run dir: start from its newest complete checkpoint instead


@dataclass
class TrainFile(Checked):
    """A train JSONL file; in a config, a plain string is a file with the defaults."""
    path: str = ""
    cap: int = bounded(0, ge=0)          # at most this many of its examples (a seeded choice, fixed for the run); 0 = all
    weight: float = bounded(1.0, gt=0)   # reads per kept example per epoch (2.0 oversamples twice, 0.5 reads half)


@dataclass
class FinetuneDataConfig(Checked):
    train: list[TrainFile] = field(default_factory=list)   # JSONL: {source, target, src_lang, tgt_lang} or MRC
    dev: str = ""                                          # JSONL scored every train.dev_every steps ("" = none)
    max_len: int = bounded(256, ge=4)        # tokens per side, special tokens included (longer text is truncated)
    max_tokens: int = bounded(4096, ge=1)    # token budget of one micro-batch (padded source + target tokens)
    max_samples: int = bounded(64, ge=1)     # and at most this many examples in it
    pad_to_multiple: int = bounded(8, ge=1)
    bucket_batches: int = bounded(16, ge=1)  # length bucketing over windows of max_samples x this many examples
    seed: int = bounded(1234, ge=0)


@dataclass
class EvalConfig(Checked):
    """Dev evaluation while fine-tuning: generation scored as launch/evaluate.py scores it."""
    metric: Literal["chrf", "rouge_l", "bleu", "loss"] = "chrf"   # keeps the best checkpoint, drives early stopping
    patience: int = bounded(0, ge=0)          # stop after this many evaluations without a better metric; 0 = never
    beam: int = bounded(5, ge=1)
    max_new_tokens: int = bounded(128, ge=1)
    batch_size: int = bounded(16, ge=1)       # sentences per generate() call
    max_examples: int = bounded(0, ge=0)      # dev examples generated per evaluation (the first ones); 0 = all


@dataclass
class FinetuneRunConfig:
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------- reading


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if isinstance(value, str):   # shorthand: a string fills the first field (a train file's path)
            value = {dataclasses.fields(typ)[0].name: value}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        return from_dict(typ, value, where)
    if origin is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, typing.get_args(typ)[0], f"{where}[{i}]") for i, v in enumerate(items)]
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
    if origin is Literal:
        if value not in typing.get_args(typ):
            raise ConfigError(f"{where}: expected one of {'|'.join(map(str, typing.get_args(typ)))}, got {value!r}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types (errors name `where.key`)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}.{e}" if where else str(e)) from None


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. data.alpha=0.5")
    key, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string such as a path
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of the nested dict `data` with each `a.b.c=value` (value parsed as JSON, else a string)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = (), cls=RunConfig):
    """Read a run config (JSON) of type `cls` (RunConfig for pretraining, FinetuneRunConfig) and apply overrides;
    `path=None` starts from the defaults."""
    raw: dict = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object at the top level")
    raw = apply_overrides(raw, overrides)
    try:
        return from_dict(cls, raw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
