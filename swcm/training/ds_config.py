"""Reading and checking a DeepSpeed JSON config before anything is built.

The files in `ds_configs/` differ only where the ZeRO stage differs. `"bf16": {"enabled": "auto"}` is ours,
not DeepSpeed's: it resolves to bf16 where the accelerator supports it (GPUs from Ampere on) and fp32
elsewhere (CPU tests), so the same file serves both.
"""

from __future__ import annotations

import json
from pathlib import Path

from swcm.config import ConfigError


def load_ds_config(path: str | Path, world_size: int, bf16_supported: bool, *, micro_batch: int = 0,
                   global_batch: int = 0) -> dict:
    """Return the DeepSpeed config at `path`, with `bf16.enabled: "auto"` resolved and its three batch fields
    checked against `world_size` and resolved; raise `ConfigError` naming the file and field otherwise.

    A run config's `train.micro_batch_size` / `train.global_batch_size` (when non-zero) replace the JSON's
    batch fields, so one ZeRO file serves every recipe; the accumulation steps then follow from them.
    """
    path = Path(path)
    cfg = _read(path)
    bf16 = cfg.get("bf16", {})
    if bf16.get("enabled") == "auto":
        bf16["enabled"] = bool(bf16_supported)
    cfg["bf16"] = bf16
    if cfg["bf16"].get("enabled") and cfg.get("fp16", {}).get("enabled"):
        raise ConfigError(f"{path}: bf16 and fp16 are both enabled; choose one")
    if micro_batch or global_batch:
        _override_batch(cfg, micro_batch, global_batch, world_size)
    _resolve_batch(cfg, path, world_size)
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    return cfg


def _read(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: DeepSpeed config not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read DeepSpeed config ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return cfg


def _override_batch(cfg: dict, micro_batch: int, global_batch: int, world_size: int) -> None:
    """Replace the JSON's batch fields by the run config's."""
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps"):
        cfg.pop(key, None)
    if micro_batch:
        cfg["train_micro_batch_size_per_gpu"] = micro_batch
    if global_batch:
        cfg["train_batch_size"] = global_batch
        if micro_batch:
            if global_batch % (micro_batch * world_size):
                raise ConfigError(f"train.global_batch_size={global_batch} is not a multiple of "
                                  f"train.micro_batch_size ({micro_batch}) x world size ({world_size})")
            cfg["gradient_accumulation_steps"] = global_batch // (micro_batch * world_size)


def _resolve_batch(cfg: dict, path: Path, world_size: int) -> None:
    """Check the batch fields against each other and the world size, then write all three, so that a run's
    saved config says what a step was."""
    micro = cfg.get("train_micro_batch_size_per_gpu")
    gas = cfg.get("gradient_accumulation_steps", 1)
    total = cfg.get("train_batch_size")
    for name, value in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", gas),
                        ("train_batch_size", total)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{path}: {name} must be a positive integer, got {value!r}")
    if micro is None and total is None:
        raise ConfigError(f"{path}: set train_micro_batch_size_per_gpu (samples per rank per micro-step)")
    if total is not None:
        if micro is not None and total != micro * gas * world_size:
            raise ConfigError(
                f"{path}: train_batch_size={total} but train_micro_batch_size_per_gpu ({micro}) x "
                f"gradient_accumulation_steps ({gas}) x world size ({world_size}) = {micro * gas * world_size}")
        if micro is None and total % (gas * world_size):
            raise ConfigError(f"{path}: train_batch_size={total} is not divisible by gradient_accumulation_steps "
                              f"({gas}) x world size ({world_size})")
    micro = micro if micro is not None else total // (gas * world_size)
    cfg.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=gas,
               train_batch_size=micro * gas * world_size)


def global_batch_size(cfg: dict, world_size: int) -> int:
    """Samples per optimizer step over all ranks implied by a checked DeepSpeed config."""
    return cfg.get("train_batch_size") or (micro_batch_size(cfg, world_size) * cfg.get("gradient_accumulation_steps", 1)
                                           * world_size)


def micro_batch_size(cfg: dict, world_size: int) -> int:
    """Samples per rank per micro-step implied by a checked DeepSpeed config."""
    if cfg.get("train_micro_batch_size_per_gpu") is not None:
        return cfg["train_micro_batch_size_per_gpu"]
    return cfg["train_batch_size"] // (cfg.get("gradient_accumulation_steps", 1) * world_size)
