"""Where a run resumes from, decided and checked before any process group exists, and loading it.

`--resume`: the run's own newest intact checkpoint. `--resume-from DIR`: a universal checkpoint
(`launch/convert_checkpoint.py universal`) or another run directory. A checkpoint written at this world size and
ZeRO stage loads as DeepSpeed wrote it; at another world size or stage it loads as a DeepSpeed universal
checkpoint (a run's checkpoint is converted first: rank 0 writes RUN/universal/step_N), with the
`checkpoint.load_universal` setting the trainer adds. The data keeps the layout it started with
(swcm/training/step_batches.py), so the global batch is kept: the gradient accumulation follows from it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from swcm.config import ConfigError
from swcm.hf_dir import config_kind
from swcm.training import checkpointing
from swcm.training.ds_config import global_batch_size, micro_batch_size

log = logging.getLogger(__name__)

# Config fields that decide the shape of the model's parameters (and so what a checkpoint can load into), besides
# the kind of model (swcm/hf_dir.py: an SWCM model and its XLM-R encoder share a model_type).
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size", "decoder_layers",
                "normal_layer_every", "tie_word_embeddings", "lang_codes")


@dataclass
class Source:
    """A checkpoint to resume from. `checkpoints` set: load DeepSpeed's own files (same layout) from that root;
    else `universal` is the universal directory, written from `convert_run` first when that is set."""
    step: int
    world: int
    stage: int
    train_batch_size: int
    micro_batch: int
    loader: dict
    model_dir: Path
    checkpoints: Path | None = None
    universal: Path | None = None
    tag: str = ""
    convert_run: Path | None = None


def _run_info(run: Path) -> dict:
    try:
        return json.loads((run / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{run / 'config.json'}: cannot read the run's config ({e})") from None


def _newest_intact(run: Path, stage: int) -> tuple[int, Path]:
    for step, ckpt in reversed(checkpointing.complete_checkpoints(run / "checkpoints")):
        problem = checkpointing.damage(ckpt, stage)
        if problem is None:
            return step, ckpt
        log.warning("skipping damaged checkpoint %s: %s", ckpt, problem)
    raise ConfigError(f"{run}: no intact complete checkpoint under checkpoints/")


def _from_run(run: Path, world: int, stage: int, out: Path) -> Source:
    info = _run_info(run)
    ds = info["deepspeed"]
    src_stage = ds.get("zero_optimization", {}).get("stage", 0)
    step, ckpt = _newest_intact(run, src_stage)
    marker = json.loads((ckpt / checkpointing.MARKER).read_text())
    rank0 = json.loads((ckpt / "swcm_rank0.json").read_text())
    world = marker["world_size"]
    source = Source(step=step, world=world, stage=src_stage, loader=rank0["loader"], model_dir=run / "model",
                    train_batch_size=global_batch_size(ds, world), micro_batch=micro_batch_size(ds, world))
    if (source.world, source.stage) == (world, stage):
        source.checkpoints = run / "checkpoints"
    elif src_stage == 0:
        raise ConfigError(f"{ckpt}: a ZeRO-0 checkpoint (at {source.world} ranks) has no ZeRO optimizer partitions to "
                          "convert, so it resumes only at the same world size and stage")
    else:
        source.universal, source.tag, source.convert_run = out / "universal" / ckpt.name, ckpt.name, run
    return source


def _from_universal(path: Path) -> Source:
    from swcm.convert.universal import read_info

    info = read_info(path)
    src = info["source"]
    return Source(step=info["step"], world=src["world_size"], stage=src["stage"],
                  train_batch_size=src["train_batch_size"], micro_batch=src["micro_batch"], loader=info["loader"],
                  model_dir=path / "model", universal=path, tag=info["tag"])


def find(out: Path, resume: bool, resume_from: str | None, world: int, stage: int) -> Source | None:
    """The checkpoint to resume from (None: start fresh); ConfigError for a source that is not usable."""
    from swcm.convert import ConversionError
    from swcm.convert.universal import is_universal

    if resume and resume_from:
        raise ConfigError("--resume and --resume-from: pass one (--resume continues --out itself)")
    if resume_from:
        src = Path(resume_from)
        if checkpointing.complete_checkpoints(out / "checkpoints") and src.resolve() != out.resolve():
            raise ConfigError(f"--out {out}: holds checkpoints already; continue it with --resume")
        try:
            if is_universal(src):
                source = _from_universal(src)
            elif (src / "checkpoints").is_dir():
                source = _from_run(src, world, stage, out)
            else:
                raise ConfigError(f"--resume-from {src}: neither a universal checkpoint (swcm_universal.json) nor "
                                  "a run directory (checkpoints/)")
        except ConversionError as e:
            raise ConfigError(f"--resume-from: {e}") from None
    elif resume and checkpointing.complete_checkpoints(out / "checkpoints"):
        source = _from_run(out, world, stage, out)
    else:
        return None
    if source.universal is not None and stage == 0:
        raise ConfigError(f"{source.universal}: DeepSpeed loads a checkpoint of another world size or ZeRO stage "
                          f"(ZeRO-{source.stage} at {source.world} ranks) only into ZeRO stages 1-3; use "
                          "ds_configs/zero1.json (or 2, 3)")
    return source


def check_compatible(source: Source, model_dir: Path, tokenizer) -> None:
    """ConfigError unless the checkpoint holds this model's parameters and was trained with this tokenizer."""
    from swcm.tokenization import load_tokenizer, tokenizer_fingerprint

    mine, theirs = ({**fields, "kind": config_kind(fields)} for fields in
                    (json.loads((d / "config.json").read_text()) for d in (model_dir, source.model_dir)))
    diffs = [f"{k}: checkpoint {theirs.get(k)!r}, model {mine.get(k)!r}" for k in ("kind", *SHAPE_FIELDS)
             if theirs.get(k) != mine.get(k)]
    if diffs:
        raise ConfigError(f"{source.model_dir}: the checkpoint is of another model ({'; '.join(diffs)})")
    if tokenizer is not None and tokenizer_fingerprint(load_tokenizer(source.model_dir)) != \
            tokenizer_fingerprint(tokenizer):
        raise ConfigError(f"{source.model_dir}: the checkpoint was trained with another tokenizer (fingerprints "
                          "differ)")


def load(engine, source: Source, rank: int) -> tuple[int, dict, dict, dict | None] | None:
    """Load `source` into `engine` (collective); returns (step, run state, rank 0's loader state, this rank's RNG
    state or None), or None when every checkpoint of the run's own root turned out damaged."""
    if source.checkpoints is not None:
        return checkpointing.load_latest(engine, source.checkpoints)
    if source.convert_run is not None:
        if rank == 0 and not source.universal.exists():
            from swcm.convert.universal import to_universal

            log.info("ZeRO-%d at %d ranks -> ZeRO-%d at %d: converting %s to a universal checkpoint in %s",
                     source.stage, source.world, engine.zero_optimization_stage(), dist.get_world_size(),
                     source.convert_run, source.universal)
            to_universal(source.convert_run, source.universal, step=source.step)
        dist.barrier()
    step, run_state = checkpointing.load_universal(engine, source.universal, source.tag)
    return step, run_state, source.loader, None
