"""A run's checkpoint as a DeepSpeed universal checkpoint, to resume at another world size or ZeRO stage
(`launch/convert_checkpoint.py universal`, `pretrain.py --resume-from`).

Layout of the output directory: `step_NNNNNNNN/`, DeepSpeed's universal folder as its `ds_to_universal` writes it
(`zero/<param>/{fp32,exp_avg,exp_avg_sq,step}.pt`, `zero/optimizer_state.pt`, the model-states file), made
loadable at every ZeRO stage 1-3 (see `_loadable_at_every_stage`); `latest_universal` naming it (DeepSpeed's
convention); `swcm_universal.json`: the step, the source run (world size, ZeRO stage, global batch size), its
loader and run state, and the model's config; `model/`: the config and tokenizer, as in a run directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from swcm.convert import ConversionError
from swcm.convert.staging import staged_directory
from swcm.output_guard import check_output_dir, check_writable

log = logging.getLogger(__name__)

INFO = "swcm_universal.json"
MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def is_universal(path: str | Path) -> bool:
    return (Path(path) / INFO).is_file()


def read_info(path: str | Path) -> dict:
    """The `swcm_universal.json` of a universal checkpoint directory; ConversionError if it is not one."""
    path = Path(path) / INFO
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path.parent}: not a universal checkpoint (no {INFO}; write one with "
                              "`launch/convert_checkpoint.py universal`)") from None
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: unreadable ({e})") from None


def _loadable_at_every_stage(step_dir: Path) -> None:
    """DeepSpeed 0.19 reads a universal folder differently per stage: the model-states file as
    `mp_rank_00_model_states.pt` at ZeRO 1/2 and as `zero_pp_rank_0_mp_rank_00_model_states.pt` at ZeRO-3;
    `zero/optimizer_state.pt` with `ds_version` at 1/2 but with `optimizer_state_dict` (the step and parameter
    groups) at 3; and each parameter's state as `{"param": tensor}` at 1/2 (ZeRO-3 takes that or a bare tensor).
    `ds_to_universal` writes only what its source stage reads. Fill in the rest from what is there."""
    present = [step_dir / n for n in MODEL_STATES if (step_dir / n).is_file()]
    if not present:
        raise ConversionError(f"{step_dir}: ds_to_universal wrote no model-states file")
    for name in MODEL_STATES:
        if not (step_dir / name).exists():
            shutil.copyfile(present[0], step_dir / name)
    optim_path = step_dir / "zero" / "optimizer_state.pt"
    optim = torch.load(optim_path, map_location="cpu", weights_only=False)   # written just now by DeepSpeed
    model_states = torch.load(present[0], map_location="cpu", weights_only=False)
    optim.setdefault("ds_version", model_states.get("ds_version"))
    if "optimizer_state_dict" not in optim:
        step = next((step_dir / "zero").glob("*/step.pt"), None)
        step = torch.load(step, weights_only=False) if step else torch.tensor(0.0)
        optim["optimizer_state_dict"] = {"state": {0: {"step": step}}, "param_groups": optim["param_groups"]}
    torch.save(optim, optim_path)
    for name in ("fp32", "exp_avg", "exp_avg_sq"):
        for path in (step_dir / "zero").glob(f"*/{name}.pt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
            if torch.is_tensor(state):
                torch.save({"param": state}, path)


def to_universal(run_dir: str | Path, out_dir: str | Path, *, step: int | None = None,
                 overwrite: bool = False) -> Path:
    """Write the universal checkpoint of a run's newest complete checkpoint (or `step`) to `out_dir`, atomically;
    ConversionError for a ZeRO-0 run (no optimizer partitions to convert), a damaged checkpoint or a non-empty
    `out_dir` without `overwrite`."""
    from swcm.convert.to_hf import _checkpoint, _run_info, run_inputs
    from swcm.training.checkpointing import MARKER, damage
    from swcm.training.ds_config import global_batch_size, micro_batch_size

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_output_dir(out_dir, run_inputs(run_dir), overwrite=overwrite)
    check_writable(out_dir)
    step, ckpt = _checkpoint(run_dir, step)
    info = _run_info(run_dir)
    stage = info["deepspeed"].get("zero_optimization", {}).get("stage", 0)
    if stage == 0:
        raise ConversionError(f"{ckpt}: a ZeRO-0 checkpoint holds no ZeRO optimizer partitions, which DeepSpeed's "
                              "ds_to_universal needs; resume it with --resume at the same world size and stage")
    problem = damage(ckpt, stage)
    if problem:
        raise ConversionError(problem)
    with staged_directory(out_dir, kind="universal") as staging:
        step_dir = staging / ckpt.name
        res = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                              str(ckpt), "--output_folder", str(step_dir), "--num_extract_workers", "1",
                              "--num_merge_workers", "1"], capture_output=True, text=True)
        if res.returncode != 0:
            tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConversionError(f"{ckpt}: DeepSpeed's ds_to_universal failed ({tail})")
        _loadable_at_every_stage(step_dir)
        rank0 = json.loads((ckpt / "swcm_rank0.json").read_text())
        world = json.loads((ckpt / MARKER).read_text())["world_size"]
        ds = info["deepspeed"]
        (staging / INFO).write_text(json.dumps({
            "step": step, "tag": ckpt.name, "source": {
                "run": str(run_dir), "world_size": world, "stage": stage,
                "train_batch_size": global_batch_size(ds, world), "micro_batch": micro_batch_size(ds, world)},
            "loader": rank0["loader"], "task": info.get("task"), "run": info.get("run")}, indent=1))
        shutil.copytree(run_dir / "model", staging / "model")
    log.info("wrote universal checkpoint %s (step %d of %s, ZeRO-%d at %d ranks)", out_dir, step, run_dir, stage,
             world)
    return out_dir
