"""Crash-safe DeepSpeed checkpoints with the loader state and RNG state of every rank.

Layout of `RUN_DIR/checkpoints/step_00000100/`: DeepSpeed's own files (`save_checkpoint`), one
`swcm_rank{r}.json` per rank (loader state, RNG states), and `COMPLETE`, written by rank 0 last, after every
rank has finished. A directory without `COMPLETE` is a save that was interrupted: resume ignores it, and the
next save of that step replaces it. `RUN_DIR/checkpoints/latest` names the newest complete checkpoint and is
written after `COMPLETE` (DeepSpeed's own `latest` would be written before the save is known to be complete on
every rank), so DeepSpeed's tools (`zero_to_fp32.py`, `ds_to_universal`) find it as they expect. A complete
checkpoint whose files were damaged later (truncated, missing) is reported and skipped by resume.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                            UNIVERSAL_CHECKPOINT_VERSION_VALUE)

from swcm.atomic_write import write_atomic
from swcm.output_guard import output_error
from swcm.training.failure import claim_failure

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
LATEST = "latest"   # the name DeepSpeed's tools read
_TAG = re.compile(r"^step_(\d{8})$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint under `root`, oldest first."""
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _TAG.match(d.name)
            if m and (d / MARKER).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def expected_files(ckpt: Path, stage: int, world_size: int) -> list[Path]:
    """The DeepSpeed files a checkpoint of this ZeRO stage and world size holds."""
    model = ([ckpt / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world_size)] if stage == 3
             else [ckpt / "mp_rank_00_model_states.pt"])
    if stage == 0:
        return model
    optim = []
    for r in range(world_size):   # bf16 runs may prefix the optimizer files with `bf16_`
        name = f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
        optim += sorted(ckpt.glob(f"*{name}"))[:1] or [ckpt / name]
    return model + optim


def damage(ckpt: Path, stage: int) -> str | None:
    """What is wrong with the complete checkpoint `ckpt` of a ZeRO-`stage` run (a missing or unreadable file,
    naming it), or None. Reads only the archives' directories (a truncated file has lost the zip directory at its
    end); damage inside an intact archive shows only when DeepSpeed loads it."""
    try:
        world_size = int(json.loads((ckpt / MARKER).read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{ckpt / MARKER}: unreadable ({e})"
    for r in range(world_size):
        path = ckpt / f"swcm_rank{r}.json"
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as e:
            return f"{path}: missing or unreadable ({type(e).__name__})"
    for path in expected_files(ckpt, stage, world_size):
        if not path.is_file():
            return f"{path}: missing (a ZeRO-{stage} checkpoint of {world_size} rank(s) needs it)"
        try:
            zipfile.ZipFile(path).close()
        except (OSError, zipfile.BadZipFile) as e:
            return f"{path}: damaged or truncated checkpoint file ({e})"
    return None


def _rng_state() -> dict:
    state = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the torch (and CUDA) RNG states saved with a checkpoint."""
    def decode(s):
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)

    torch.set_rng_state(decode(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(decode(state["cuda"]))


def save(engine, root: Path, step: int, *, loader_state: dict, run_state: dict, keep_last: int,
         protect: set[int] = frozenset()) -> Path:
    """Save a complete checkpoint of `step` on every rank (collective); keep the newest `keep_last` and the steps
    in `protect` (a fine-tuning run's best)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    tag = tag_for(step)
    ckpt = root / tag
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if ckpt.exists():  # an interrupted earlier save of this very step
            shutil.rmtree(ckpt)
    dist.barrier()
    # universal_checkpoint_info: what DeepSpeed's ds_to_universal needs from the saving side (no tensor or pipeline
    # parallelism here, so only the format version).
    try:
        engine.save_checkpoint(str(root), tag=tag, save_latest=False, client_state={
            "swcm": run_state,
            UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}})
        ckpt.mkdir(parents=True, exist_ok=True)
        per_rank = {"rank": rank, "world_size": world, "step": step, "loader": loader_state, "rng": _rng_state()}
        write_atomic(ckpt / f"swcm_rank{rank}.json", json.dumps(per_rank))
    except Exception as e:
        claim_failure()   # before the clean-up below makes the other ranks' writes fail too
        shutil.rmtree(ckpt, ignore_errors=True)   # the disk as it was before the save (resume ignores it anyway)
        named = output_error(e, ckpt)   # a full disk or another OSError: `PATH: reason`
        if named is None:
            raise
        raise named from e
    dist.barrier()
    if rank == 0:
        write_atomic(ckpt / MARKER, json.dumps({"step": step, "world_size": world}) + "\n")
        write_atomic(root / LATEST, tag)
        for old_step, old in complete_checkpoints(root)[:-keep_last]:
            if old_step not in protect:
                shutil.rmtree(old, ignore_errors=True)
        log.info("saved checkpoint %s", ckpt)
    dist.barrier()
    return ckpt


def remove_incomplete(root: Path) -> list[Path]:
    """Remove the checkpoint directories under `root` that have no COMPLETE marker (saves that died midway, whose
    ranks could not all clean up); returns them. Only for the run's one writer, before it saves."""
    removed = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if _TAG.match(d.name) and d.is_dir() and not (d / MARKER).is_file():
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed


def load_latest(engine, root: Path) -> tuple[int, dict, dict, dict] | None:
    """Load the newest complete checkpoint under `root` that is intact into `engine` (collective); a damaged newer
    one is reported (naming the file) and skipped.

    Returns (step, run_state, loader_state, rng_state), or None when there is none. The caller restores
    `rng_state` (with `set_rng_state`) right before the first training step, so that nothing run in between
    (data-loader start-up, benchmarks) shifts the dropout masks.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    stage = engine.zero_optimization_stage()
    for step, ckpt in reversed(complete_checkpoints(root)):
        problem = damage(ckpt, stage)
        flags = torch.tensor([float(problem is not None)], device=engine.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)   # every rank loads the same checkpoint or none
        if flags.item():
            if rank == 0:
                log.warning("skipping damaged checkpoint %s: %s", ckpt, problem or "a file another rank reads is bad")
            continue
        marker = json.loads((ckpt / MARKER).read_text())
        if marker["world_size"] != world:
            raise RuntimeError(f"{ckpt}: saved with world size {marker['world_size']}, resumed with {world}; the "
                               "loader position is per rank, so resume with the same number of ranks")
        _, client = engine.load_checkpoint(str(root), tag=ckpt.name, load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
        if client is None:
            raise RuntimeError(f"{ckpt}: DeepSpeed could not load this checkpoint")
        per_rank = json.loads((ckpt / f"swcm_rank{rank}.json").read_text())
        log.info("resumed from %s (step %d)", ckpt, step)
        return step, client["swcm"], per_rank["loader"], per_rank["rng"]
    return None


def load_universal(engine, root: Path, tag: str) -> tuple[int, dict]:
    """Load the universal checkpoint `root/tag` into `engine` (collective; the engine was configured with
    `checkpoint.load_universal`): weights, optimizer moments, lr schedule and step. Returns (step, run state)."""
    weight_decay = [group.get("weight_decay") for group in engine.optimizer.param_groups]
    _, client = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if client is None:
        raise RuntimeError(f"{root / tag}: DeepSpeed could not load this universal checkpoint")
    # DeepSpeed's ZeRO-3 universal loader gives every parameter group the hyperparameters of the first one, and one
    # shared `step` tensor, which the optimizer then advances once per group and step (so the bias correction of all
    # but the first group runs ahead). Keep each group's own weight decay and give each state its own step.
    for group, decay in zip(engine.optimizer.param_groups, weight_decay):
        group["weight_decay"] = decay
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in inner.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
    log.info("resumed from universal checkpoint %s (step %d)", root / tag, client["swcm"]["step"])
    return client["swcm"]["step"], client["swcm"]
