"""The training loop shared by pretraining and fine-tuning, in torchtitan's shape:

    Trainer(cfg, ds_config, out, task=...)   checks everything a user can get wrong, before any process group
    .train()                                  build -> restore -> (train_step -> log -> evaluate -> save)*

The task (`PretrainTask`, the fine-tuning task) says where the model and the batches come from and what the dev
evaluation measures; the trainer owns the engine, the step, the logs and the checkpoints. DeepSpeed stays a thin
layer over the task's plain model (`SWCMForConditionalGeneration`, or an XLM-R for masked-LM pretraining) and
`torch.optim.AdamW` (swcm/training/engine.py).

A step's gradient is that of (sum of token losses over every micro-batch on every rank) / (scored tokens in the
step): the split into micro-batches and ranks changes nothing, and a filler batch counts no token. The count is
known before the first backward (labels are on the host) and all-reduced once per step; loss sums stay on the
device and are read once per step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from swcm.atomic_write import write_atomic
from swcm.cli_exit import print_error
from swcm.config import ConfigError, RunConfig
from swcm.modeling_swcm import resolve_attn_implementation
from swcm.output_guard import check_output_dir, mark_ours
from swcm.seq2seq_layout import scored
from swcm.training import checkpointing, nonfinite
from swcm.training import resume as resume_module
from swcm.training.ds_config import load_ds_config, micro_batch_size
from swcm.training.engine import build_engine, init_process_group
from swcm.training.run_lock import hold_run_lock
from swcm.training.metrics import LossTracker, device_peak_flops, memory_gb
from swcm.training.release import release_engine, return_freed_memory
from swcm.training.run_log import RunLog, SampleLog
from swcm.training.step_batches import StepBatches, data_layout
from swcm.training.stop import StopRequest

log = logging.getLogger("swcm.train")


@dataclass
class StepResult:
    loss: float          # per-token mean over the step, all ranks (NaN if a loss was not finite)
    grad_norm: float
    applied: bool        # False: the update was skipped (non-finite gradients)
    tokens: int          # source + scored target tokens of the step, all ranks
    seconds: float
    stop_requested: bool = False   # some rank had a stop request by the end of the step


class Throughput:
    """Tokens, samples and model FLOPs since the last log step, counted on the host from the batches;
    `flops(batch)` gives a batch's training FLOPs."""

    def __init__(self, flops):
        self.flops_of = flops
        self.reset()

    def reset(self) -> None:
        self.tokens = self.samples = self.flops = 0.0
        self.start = time.perf_counter()

    def add(self, batch: dict) -> int:
        """Count one micro-batch; returns its tokens: source tokens, plus the scored target tokens where there is a
        decoder (not the decoder's unscored input after `</s>`, so that tokens/s counts what is trained on, as a
        Hugging Face user counts it from the labels)."""
        tokens = int(batch["attention_mask"].sum())
        if "decoder_attention_mask" in batch:
            tokens += int(scored(batch["labels"]).sum())
        self.tokens += tokens
        self.samples += 0 if batch.get("is_padding") else len(batch["attention_mask"])
        self.flops += self.flops_of(batch)
        return tokens


def _check_out_dir(out: Path) -> None:
    """ConfigError unless `out` is, or can be created as, a writable directory: probed by creating and removing a
    file in it or its nearest existing parent (permission bits say nothing for root; a read-only filesystem does)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, expected a run directory")
    existing = next(p for p in (out, *out.parents) if p.exists())
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write in {existing} ({e.strerror})") from None


def run_inputs(cfg, *paths: str | None) -> list[str]:
    """What a run reads from disk: the paths named in its config's model and data sections (the model, tokenizer,
    shards, task files; URLs and `pipe:` sources are not paths) and `paths` (config files, a resume source)."""
    named = [v for section in ("model", "data") for v in cfg.to_dict().get(section, {}).values()
             if isinstance(v, str) and v and "://" not in v and not v.startswith("pipe:")]
    return [p for p in (*named, *paths) if p and Path(p).exists()]


class Trainer:
    """Construct (checks only), then `train()`; returns the process exit code."""

    def __init__(self, cfg: RunConfig, ds_config_path: str, out_dir: str, *, task, resume: bool = False,
                 resume_from: str | None = None):
        self.cfg, self.out, self.task, self.resume = cfg, Path(out_dir), task, resume
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.ds_config_path = ds_config_path
        self.ds_config = self._ds_config(cfg.train.micro_batch_size, cfg.train.global_batch_size)
        _check_out_dir(self.out)
        self.tokenizer = task.check()
        if checkpointing.complete_checkpoints(self.out / "checkpoints") and not (resume or resume_from):
            raise ConfigError(f"{self.out}: holds checkpoints already; pass --resume to continue it, or choose "
                              "another --out")
        self.source = resume_module.find(self.out, resume, resume_from, self.world,
                                         self.ds_config.get("zero_optimization", {}).get("stage", 0))
        self.data_layout = None   # (data ranks, micro-batches a step); None: this run's first layout
        if self.source is not None:
            resume_module.check_compatible(self.source, task.config_dir(), self.tokenizer)
            self._fit_to_source()
        elif resume and self.rank == 0:
            log.warning("--resume: no complete checkpoint in %s; starting from step 0", self.out / "checkpoints")
        # A run directory is ours or new (never a folder of other files) and apart from everything the run reads.
        check_output_dir(self.out, run_inputs(cfg, ds_config_path, resume_from), overwrite=True)
        # The checks passed: from here this job is the run directory's one writer (rank 0 holds the lock until it
        # ends) and the directory is ours, also if the run fails before its first file.
        self._lock = hold_run_lock(self.out) if self.rank == 0 else None
        if self.rank == 0:
            mark_ours(self.out, "run")
            for partial in checkpointing.remove_incomplete(self.out / "checkpoints"):
                log.warning("removed %s: a save that did not complete", partial)

    def _ds_config(self, micro_batch: int, global_batch: int) -> dict:
        accel_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return load_ds_config(self.ds_config_path, self.world, accel_bf16, micro_batch=micro_batch,
                              global_batch=global_batch)

    def _fit_to_source(self) -> None:
        """Keep the checkpoint's micro-batch size, global batch and data layout at this world size (the gradient
        accumulation follows), and let DeepSpeed load a checkpoint of another layout as a universal one."""
        src, train = self.source, self.cfg.train
        if train.micro_batch_size not in (0, src.micro_batch):
            raise ConfigError(f"train.micro_batch_size {train.micro_batch_size}: the checkpoint's data was batched "
                              f"with {src.micro_batch} samples per micro-batch; keep that")
        if train.global_batch_size not in (0, src.train_batch_size):
            raise ConfigError(f"train.global_batch_size {train.global_batch_size}: the checkpoint's steps hold "
                              f"{src.train_batch_size} samples; keep that (or leave it 0)")
        steps = src.train_batch_size // src.micro_batch   # micro-batches a step, over all ranks
        if steps % self.world:
            raise ConfigError(f"--resume at {self.world} ranks: the checkpoint's steps are {steps} micro-batches of "
                              f"{src.micro_batch} samples, which {self.world} ranks cannot share evenly; use a "
                              f"number of ranks that divides {steps}")
        self.ds_config = self._ds_config(src.micro_batch, src.train_batch_size)
        self.data_layout = data_layout(src.loader, source_world=src.world, source_gas=steps // src.world)
        if src.universal is not None:
            self.ds_config.setdefault("checkpoint", {})["load_universal"] = True

    # ------------------------------------------------------------------------------------------------ build
    def build(self) -> None:
        """Process group, model, engine and data streams."""
        self.rank, self.world = init_process_group(self.cfg.train.gloo_piece_mb)
        self.task.prepare(self)
        self._keep_zero3_config()
        model = self.task.build_model(self.cfg)
        self.model_config = model.config
        self.n_params = sum(p.numel() for p in model.parameters())
        self.engine, self.scheduler = build_engine(model, self.cfg.train, self.ds_config, self.cfg.train.max_steps)
        self.device = self.engine.device
        self.attention = resolve_attn_implementation(self.cfg.model.attn_implementation, self.device)
        self.lm_head = self.task.lm_head(self.model_config, self.device)
        self.stage = self.engine.zero_optimization_stage()
        self.gas = self.engine.gradient_accumulation_steps()
        micro = micro_batch_size(self.ds_config, self.world)
        data_world, data_gas = self.data_layout or (self.world, self.gas)
        self.train_data = StepBatches(lambda v: self.task.build_data(self.tokenizer, v, data_world, micro)[0],
                                      data_world=data_world, data_gas=data_gas, world=self.world, gas=self.gas,
                                      rank=self.rank)
        self.dev_data = self.task.build_data(self.tokenizer, self.rank, self.world, micro)[1]
        self.tracker = LossTracker(self.task.loss_keys(self.model_config), self.device)
        self.throughput = Throughput(lambda batch: self.task.flops(self.model_config, batch))
        self.peak_flops = device_peak_flops(self.device)

    def _keep_zero3_config(self) -> None:
        """Under ZeRO-3, an HfDeepSpeedConfig kept alive for the run makes `from_pretrained` build the task's model
        under `zero.Init`, loading each weight into its partition (a bare `zero.Init` would partition submodules
        before `_init_weights`; see CPU-NOTES), and makes generation synchronise the ranks. Other stages build the
        model whole."""
        self._hf_ds_config = None
        if self.ds_config.get("zero_optimization", {}).get("stage", 0) == 3:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)

    # ------------------------------------------------------------------------------------------------ helpers
    def _reduce(self, values, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """All-reduce `values` (a list or tensor) as a float64 tensor on the device; collective."""
        t = torch.as_tensor(values, dtype=torch.float64).to(self.device)
        dist.all_reduce(t, op=op)
        return t

    def _to_device(self, batch: dict) -> dict:
        """The batch's tensors (the model's inputs) on the device; metadata stays behind."""
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}

    def _zero0_grad_norm(self) -> float:
        """The global gradient norm at ZeRO-0, where DeepSpeed records none (the gradients are all-reduced by now)."""
        grads = [p.grad.detach().double().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return torch.stack(grads).norm().item() if grads else 0.0

    # ------------------------------------------------------------------------------------------------ the step
    def train_step(self, batches: list[dict], stop: StopRequest | None = None) -> StepResult:
        """One optimizer step over this rank's micro-batches `batches` (collective): the gradient of the step's
        per-token mean loss over all ranks, applied unless it is not finite. Whether any rank's `stop` was requested
        by the end of the step rides on the step's closing all-reduce (no collective of its own)."""
        start = time.perf_counter()
        masks = [scored(b["labels"]) for b in batches]
        count = self._reduce([float(sum(int(m.sum()) for m in masks))])[0]   # scored tokens in the step
        divisor = count.clamp(min=1).float()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)     # token-loss sum, non-finite losses
        tokens, grad_norm = 0, None
        for i, (batch, mask) in enumerate(zip(batches, masks)):
            out = self.engine(**self._to_device(batch), num_items_in_batch=divisor)
            # DeepSpeed averages gradients over ranks; x world turns that average into the sum over ranks.
            self.engine.backward(out.loss * self.world, scale_wrt_gas=False)
            if i == len(batches) - 1 and self.stage == 0:
                grad_norm = self._zero0_grad_norm()
                if not math.isfinite(grad_norm):
                    nonfinite.skip_next_step(self.engine)
            self.engine.step()
            sums[0] += out.token_losses.sum()
            sums[1] += (~torch.isfinite(out.loss.detach())).double()
            self.tracker.add(out.token_losses, mask, self.task.sample_keys(batch))
            tokens += self.throughput.add(batch)
        applied = self.engine.was_step_applied()
        if grad_norm is not None and not math.isfinite(grad_norm):
            nonfinite.check_skipped(self.engine)
            applied = False
        if grad_norm is None:   # ZeRO 1-3: DeepSpeed's own (None when its norm computation is off)
            grad_norm = self.engine.get_global_grad_norm()
        requested = float(stop is not None and stop.requested)
        stats = self._reduce(torch.cat([sums, sums.new_tensor([float(tokens), requested])]))
        loss_sum, bad, all_tokens, stops, n = torch.cat([stats, count.view(1)]).tolist()   # the step's one host sync
        return StepResult(loss=loss_sum / max(n, 1) if bad == 0 else float("nan"),
                          grad_norm=float("nan") if grad_norm is None else float(grad_norm), applied=applied,
                          tokens=int(all_tokens), seconds=time.perf_counter() - start, stop_requested=stops > 0)

    # ------------------------------------------------------------------------------------------------ the loop
    def train(self) -> int:
        """Train to `train.max_steps`, or until SIGTERM/SIGINT (save, exit 0, without the task's end-of-run work such
        as fine-tuning's export: `--resume` does it) or too many skipped steps in a row (exit 3); returns the exit
        code. An exception ends this rank at once: streams closed, nothing waited for."""
        self.build()
        step, rng_state = self.restore()
        self.run_log = self._start_run_files(step)
        self.sample_log = SampleLog(self.out, self.rank, step) if self.cfg.train.sample_log else None
        stop = StopRequest(self.rank)
        batches = iter(self.train_data)
        try:
            step, exit_code = self._loop(step, rng_state, batches, stop)
        finally:
            stop.restore()
            batches.close()   # shuts the loader's workers down, also on the way out of an exception
        self._finish(step, exit_code)
        if exit_code == 0 and not self.interrupted:   # stopped by a signal: resumed later, finished then
            # The export that may follow must not stack on top of the model, gradients and optimizer states.
            release_engine(self.engine)
            self.engine = self.scheduler = self.tracker = None
            return_freed_memory()
            self.task.finish(self)
            self._write_perf(process_peak_gb=memory_gb(self.device))
        return exit_code

    def _loop(self, step: int, rng_state, batches, stop: StopRequest) -> tuple[int, int]:
        """Steps until the end, a stop request, early stopping or a failure; returns (last step, exit code)."""
        train, total = self.cfg.train, self.cfg.train.max_steps
        skipped_in_a_row, seeded, self.interrupted = 0, False, False
        while step < total:
            step_batches = [next(batches) for _ in range(self.gas)]
            if not seeded:   # after the loader has started: its workers and ZeRO-3's set-up may draw from the RNG
                self._seed_dropout(rng_state)
                seeded = True
            result = self.train_step(step_batches, stop)
            step += 1
            if self.sample_log is not None:
                self.sample_log.add(step, step_batches)
            skipped_in_a_row = 0 if result.applied else skipped_in_a_row + 1
            self.log_step(step, result, skipped_in_a_row)
            if skipped_in_a_row >= train.max_nonfinite_in_a_row:
                return step, self._fail(f"{skipped_in_a_row} steps in a row had non-finite gradients and were "
                                        "skipped (lower train.lr, check the data, or use bf16 rather than fp16)", 3)
            save_now = early_stop = False
            stopping = result.stop_requested
            if train.dev_every and (step % train.dev_every == 0 or step == total):
                save_now, early_stop = self.task.after_evaluate(step, self.evaluate(step))
                # a signal may have come during the evaluation: agree on it again (only at evaluation steps)
                stopping = bool(self._reduce([float(stop.requested)], dist.ReduceOp.MAX).item())
            if stopping or save_now or early_stop or step % train.save_every == 0 or step == total:
                self.save(step)
            if stopping or early_stop:
                self.interrupted = stopping
                if self.rank == 0:
                    log.warning("stopped at step %d: %s", step, "by signal; resume with --resume" if stopping
                                else "early stopping (no better dev metric for eval.patience evaluations)")
                break
        return step, 0

    def _seed_dropout(self, rng_state) -> None:
        """Dropout's RNG: the checkpoint's on resume, so every stage and every resume sees the same masks; else
        seeded per rank and step (a fresh run, or a resume at another layout, whose ranks' RNG states do not map onto
        the old ones)."""
        if rng_state is not None:
            checkpointing.set_rng_state(rng_state)
        else:
            torch.manual_seed(self.cfg.train.seed + self.rank + 1_000_003 * getattr(self, "resumed_step", 0))

    def _fail(self, message: str, code: int) -> int:
        if self.rank == 0:
            log.error(message)
            print_error(message)
        return code

    def restore(self) -> tuple[int, dict | None]:
        """Load the resume source, if any (engine, loader position, task state); returns (step, this rank's RNG
        state to restore before the first step, or None)."""
        loaded = resume_module.load(self.engine, self.source, self.rank) if self.source is not None else None
        if loaded is None:
            return 0, None
        step, run_state, loader_state, rng_state = loaded
        self.train_data.load_state_dict(loader_state)
        self.task.load_state_dict(run_state.get("task", {}))
        self.resumed_step = step
        return step, rng_state

    def _start_run_files(self, step: int) -> RunLog | None:
        """Rank 0: the resolved config, the run's own copy of the model config and tokenizer (`to-hf` then needs
        nothing outside the run directory), and the run log."""
        if self.rank != 0:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        write_atomic(self.out / "config.json", json.dumps(
            {"run": self.cfg.to_dict(), "task": self.task.name, "deepspeed": self.ds_config,
             "world_size": self.world, "attention": self.attention, "lm_head": self.lm_head}, indent=2))
        self.model_config.save_pretrained(str(self.out / "model"))
        self.tokenizer.save_pretrained(str(self.out / "model"))
        log.info("model: %.1fM parameters (%s); world size %d, ZeRO stage %d, %s, %d micro-batches per step; "
                 "attention %s -> %s (%s tensors), LM head %s", self.n_params / 1e6, self.task.describe(self.model_config),
                 self.world, self.stage, "bf16" if self.ds_config["bf16"].get("enabled") else "fp32", self.gas,
                 self.cfg.model.attn_implementation, self.attention, self.device.type, self.lm_head)
        return RunLog(self.out, step, self.cfg.train.max_steps, self.task.name)

    # ------------------------------------------------------------------------------------------------ logging
    def log_step(self, step: int, result: StepResult, skipped_in_a_row: int) -> None:
        """Every step: metrics.jsonl and train/loss, lr, grad_norm; every `log_every` steps (collective): losses per
        objective and language, throughput, MFU and peak memory."""
        lr = self.scheduler.get_last_lr()[0]
        if not result.applied and self.rank == 0:
            log.warning("step %d: non-finite gradients, update skipped (%d in a row)", step, skipped_in_a_row)
        if self.rank == 0:
            self.run_log.step_row({"step": step, "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
                                   "tokens": result.tokens, "step_time_s": result.seconds,
                                   "skipped": not result.applied})
        if step % self.cfg.train.log_every and step != self.cfg.train.max_steps:
            return
        by_key = self.tracker.reduce_and_reset(self._reduce)
        tp = self.throughput
        secs = time.perf_counter() - tp.start
        window = self._reduce([tp.tokens, tp.samples, tp.flops]).tolist()
        mem = self._reduce([memory_gb(self.device)], dist.ReduceOp.MAX).item()
        tp.reset()
        if self.rank == 0:
            scalars = {f"train/loss_{key}": value for key, value in by_key.items()}
            scalars.update({"perf/tokens_per_s": window[0] / secs, "perf/samples_per_s": window[1] / secs,
                            "perf/mfu": window[2] / secs / (self.peak_flops * self.world),
                            "memory/peak_gb_per_rank": mem})
            self.run_log.scalars(step, scalars)

    # ------------------------------------------------------------------------------------------------ evaluate
    def evaluate(self, step: int) -> dict[str, float]:
        """The task's dev metrics (collective), logged as `dev/<name>`."""
        self.engine.eval()
        try:
            with torch.no_grad():
                metrics = self.task.evaluate(self, step)
        finally:
            self.engine.train()
        if self.rank == 0 and metrics:
            self.run_log.scalars(step, {f"dev/{k}": v for k, v in metrics.items()})
            log.info("step %d: dev %s", step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def dev_loss(self) -> float | None:
        """Per-token loss over at most `train.dev_batches` batches of the dev stream, all ranks (collective)."""
        if self.dev_data is None:
            return None
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        with contextlib.closing(self.dev_data.epoch_batches()) as batches:   # loader workers end with the loop
            for n, batch in enumerate(batches):
                if n >= self.cfg.train.dev_batches:
                    break
                out = self.engine(**self._to_device(batch))
                sums[0] += out.token_losses.sum()
                sums[1] += float(scored(batch["labels"]).sum())
        loss_sum, count = self._reduce(sums).tolist()
        return loss_sum / count if count > 0 else None

    # ------------------------------------------------------------------------------------------------ save / end
    def save(self, step: int) -> None:
        """A complete checkpoint of `step` on every rank (collective), with the loader position and RNG states."""
        checkpointing.save(self.engine, self.out / "checkpoints", step, loader_state=self.train_data.state_dict(),
                           run_state={"step": step, "config": self.cfg.to_dict(), "task_name": self.task.name,
                                      "task": self.task.state_dict()},
                           keep_last=self.cfg.train.keep_last, protect=self.task.protected_steps())
        self.last_saved = step

    def _write_perf(self, **extra: float) -> None:
        """RUN/perf/rank{R}.json: `peak_memory_gb`, this rank's peak by the end of training (the final save included),
        plus `extra` (at the very end: `process_peak_gb`, the peak over the whole process, end-of-run work included)."""
        perf = self.out / "perf"
        perf.mkdir(parents=True, exist_ok=True)
        write_atomic(perf / f"rank{self.rank}.json", json.dumps({"peak_memory_gb": self.training_peak_gb, **extra}))

    def _finish(self, step: int, exit_code: int) -> None:
        if self.rank == 0 and self.run_log is not None:
            self.run_log.close()
            if exit_code == 0 and getattr(self, "last_saved", None) == step:
                log.info("done: step %d, checkpoint in %s", step,
                         self.out / "checkpoints" / checkpointing.tag_for(step))
        self.training_peak_gb = memory_gb(self.device)
        self._write_perf()
        dist.barrier()
