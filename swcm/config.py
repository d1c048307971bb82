"""Run configs: one JSON file with `model`, `data` and `train` sections, plus `--set key=value` overrides.

Every key is checked: an unknown key, a wrong type or an unreadable file is a `ConfigError` naming the
file and the dotted key, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from swcm.data.config import DataConfig


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and key."""


@dataclass
class ModelConfig:
    path: str = ""                      # an SWCM HF dir (from `convert_checkpoint.py from-encoder`)
    attn_implementation: str = "sdpa"   # eager | sdpa | triton
    fused_lm_head_ce: bool = True       # chunked LM head + cross-entropy (never holds N x V logits)
    gradient_checkpointing: bool = False


@dataclass
class TrainConfig:
    max_steps: int = 1000
    lr: float = 1e-4                    # paper: AdamW, peak 1e-4
    warmup_ratio: float = 0.1           # paper: linear warmup over 10% of the steps, then linear decay
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    label_smoothing: float = 0.0
    micro_batch_size: int = 0           # samples per rank per micro-step; 0 = the DeepSpeed JSON's value
    global_batch_size: int = 0          # samples per optimizer step over all ranks; 0 = the DeepSpeed JSON's
    seed: int = 1234
    log_every: int = 10
    save_every: int = 200
    keep_last: int = 3
    dev_every: int = 200
    dev_batches: int = 8
    max_nonfinite_in_a_row: int = 5     # a run whose loss stays NaN/inf this long stops
    gloo_piece_mb: float = 32.0         # gloo (CPU ranks): collectives above this size run in pieces of it; 0 = off


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        return from_dict(typ, value, where)
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
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
    return cls(**kwargs)


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


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a run config (JSON) and apply overrides; `path=None` starts from the defaults."""
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
        return from_dict(RunConfig, raw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
