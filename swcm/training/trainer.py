"""The pretraining loop: streamed DAE + MT batches -> SWCM loss -> DeepSpeed engine, with logging and resume.

DeepSpeed stays a thin layer: the model is a plain `SWCMForConditionalGeneration`, the optimizer a plain
`torch.optim.AdamW` with a linear warmup/decay `LambdaLR`; `deepspeed.initialize` wraps them with the ZeRO
stage named in the JSON file. Every rank runs the same sequence of collectives, so stopping (SIGTERM/SIGINT,
non-finite losses) is agreed with an all-reduce before anyone acts on it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from swcm.config import ConfigError, RunConfig
from swcm.training import checkpointing
from swcm.training.ds_config import load_ds_config, micro_batch_size
from swcm.training.fp32_master import share_fp32_master
from swcm.training.gloo_collectives import use_bounded_gloo_collectives
from swcm.training.metrics import LossTracker, device_peak_flops, memory_gb, model_flops

log = logging.getLogger("swcm.pretrain")

TASKS = ("dae", "mt")


def linear_warmup_decay(total_steps: int, warmup_ratio: float):
    """lr multiplier: 0 -> 1 linearly over the warmup steps, then linearly down to 0 at `total_steps`."""
    warmup = max(1, int(round(total_steps * warmup_ratio)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _param_groups(model, weight_decay: float):
    """AdamW groups: no weight decay on biases and LayerNorm weights (BERT/XLM-R practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Pretrainer:
    """Builds model, data and engine from a checked config and runs the loop. Construct, then `run()`."""

    def __init__(self, cfg: RunConfig, ds_config_path: str, out_dir: str, *, resume: bool = False):
        from swcm.tokenization import load_tokenizer
        from swcm.data.shards import check_shards

        self.cfg, self.out, self.resume = cfg, Path(out_dir), resume
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))

        # Everything a user can get wrong is checked here, before any process group or model exists.
        accel_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        self.ds_config = load_ds_config(ds_config_path, self.world, accel_bf16,
                                        micro_batch=cfg.train.micro_batch_size,
                                        global_batch=cfg.train.global_batch_size)
        model_dir = Path(cfg.model.path)
        if not (model_dir / "config.json").is_file():
            raise ConfigError(f"model.path: {model_dir} is not a model directory (no config.json); create one "
                              "with `launch/convert_checkpoint.py from-encoder`")
        if cfg.model.attn_implementation not in ("eager", "sdpa", "triton"):
            raise ConfigError(f"model.attn_implementation: expected eager|sdpa|triton, got "
                              f"{cfg.model.attn_implementation!r}")
        if not cfg.data.shards:
            raise ConfigError("data.shards: no shard directory given")
        if cfg.train.gloo_piece_mb < 0:
            raise ConfigError(f"train.gloo_piece_mb: expected a size in MiB >= 0 (0 = off), "
                              f"got {cfg.train.gloo_piece_mb}")
        self.tokenizer = load_tokenizer(model_dir)
        check_shards(cfg.data.shards, self.tokenizer)
        if cfg.data.dev_shards:
            check_shards(cfg.data.dev_shards, self.tokenizer)
        ckpts = checkpointing.complete_checkpoints(self.out / "checkpoints")
        if ckpts and not resume:
            raise ConfigError(f"{self.out}: holds checkpoints already; pass --resume to continue it, or choose "
                              "another --out")

    # ---------------------------------------------------------------- building
    def _build(self):
        import deepspeed

        from swcm.data.stream import PretrainStream
        from swcm.modeling_swcm import SWCMForConditionalGeneration

        cfg = self.cfg
        deepspeed.init_distributed()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        piece_bytes = int(cfg.train.gloo_piece_mb * 2 ** 20)
        if piece_bytes and use_bounded_gloo_collectives(piece_bytes) and self.rank == 0:
            log.info("gloo: all-gathers and reduce-scatters above %.4g MiB run in pieces of that size (bounded memory)",
                     cfg.train.gloo_piece_mb)
        # ZeRO-3: with an HfDeepSpeedConfig alive, `from_pretrained` builds the model under `zero.Init` and
        # loads each weight into its partition, so no rank ever holds the whole model (a bare `zero.Init`
        # would partition submodules before `_init_weights` runs; see CPU-NOTES). Other stages build it whole.
        self._hf_ds_config = None
        if self.ds_config.get("zero_optimization", {}).get("stage", 0) == 3:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)  # must stay referenced while building
        model = SWCMForConditionalGeneration.from_pretrained(
            cfg.model.path, attn_implementation=cfg.model.attn_implementation, dtype=torch.float32)
        model.config.fused_lm_head_ce = cfg.model.fused_lm_head_ce
        model.config.label_smoothing = cfg.train.label_smoothing
        if cfg.model.gradient_checkpointing:
            model.activation_checkpointing_enable()
        self.model_config = model.config
        self.n_params = sum(p.numel() for p in model.parameters())

        # fused=True: one kernel per step, no foreach temporaries (those cost several copies of the model's
        # parameters at the optimizer step, which set the peak memory of every ZeRO stage).
        optimizer = torch.optim.AdamW(_param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr,
                                      betas=cfg.train.betas, eps=cfg.train.eps, fused=True)
        factor = linear_warmup_decay(cfg.train.max_steps, cfg.train.warmup_ratio)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor))
        self.engine.train()  # from_pretrained returns the model in eval mode: no dropout, no activation checkpointing
        self.device = self.engine.device
        freed = share_fp32_master(self.engine.optimizer)
        if freed and self.rank == 0:
            log.info("fp32 weights: ZeRO's fp32 master partition is the model's own (%.2f GB per rank not copied)",
                     freed / 2 ** 30)
        self.gas = self.ds_config.get("gradient_accumulation_steps", 1)

        data_cfg = replace(cfg.data, max_samples=micro_batch_size(self.ds_config, self.world))
        self.stream = PretrainStream(data_cfg, self.tokenizer, rank=self.rank, world_size=self.world)
        self.dev_stream = (PretrainStream(data_cfg, self.tokenizer, rank=self.rank, world_size=self.world, split="dev")
                           if cfg.data.dev_shards else None)
        self.langs = list(getattr(model.config, "lang_codes", []) or [])

    # ---------------------------------------------------------------- helpers
    def _all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        dist.all_reduce(t, op=op)
        return t

    def _any_rank(self, flag: bool) -> bool:
        return bool(self._all_reduce(torch.tensor([int(flag)]), dist.ReduceOp.MAX).item())

    def _to_device(self, batch: dict) -> dict:
        keys = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels")
        return {k: batch[k].to(self.device) for k in keys}

    def _grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        if norm is None:  # ZeRO-0 fp32 clips without recording the norm; the grads are all-reduced by now
            grads = [p.grad.detach().double().norm() for p in self.engine.module.parameters() if p.grad is not None]
            norm = torch.stack(grads).norm().item() if grads else 0.0
        return float(norm)

    def _request_stop(self, signum, frame):
        log.warning("rank %d received %s: saving a checkpoint after this step", self.rank,
                    signal.Signals(signum).name)
        self.stop_requested = True

    # ---------------------------------------------------------------- dev loss
    def _dev_loss(self) -> float | None:
        if self.dev_stream is None:
            return None
        sums = torch.zeros(2, dtype=torch.float64)
        self.engine.eval()
        with torch.no_grad():
            for n, batch in enumerate(self.dev_stream.epoch_batches()):
                if n >= self.cfg.train.dev_batches:
                    break
                out = self.engine(**self._to_device(batch))
                sums[0] += out.token_losses.double().sum().cpu()
                sums[1] += (batch["labels"] != -100).sum()
        self.engine.train()
        self._all_reduce(sums)
        return (sums[0] / sums[1]).item() if sums[1] > 0 else None

    # ---------------------------------------------------------------- the loop
    def run(self, max_steps: int | None = None) -> int:
        """Train to `max_steps` (or the config's), or until SIGTERM/SIGINT; return the process exit code."""
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self._build()
        cfg, rank = self.cfg, self.rank
        total = max_steps or cfg.train.max_steps
        ckpt_root = self.out / "checkpoints"
        step, rng_state = 0, None
        if self.resume:
            loaded = checkpointing.load_latest(self.engine, ckpt_root)
            if loaded is not None:
                step, _, loader_state, rng_state = loaded
                self.stream.load_state_dict(loader_state)
            elif rank == 0:
                log.info("--resume: no complete checkpoint in %s, starting from step 0", ckpt_root)

        metrics_path = self.out / "metrics.jsonl"
        writer = None
        if rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            checkpointing.write_atomic(self.out / "config.json", json.dumps(
                {"run": cfg.to_dict(), "deepspeed": self.ds_config, "world_size": self.world}, indent=2))
            # The run's own copy of the model config and tokenizer: `to-hf` needs nothing outside RUN_DIR.
            self.model_config.save_pretrained(str(self.out / "model"))
            self.tokenizer.save_pretrained(str(self.out / "model"))
            kept = []
            if metrics_path.exists():  # drop what a crashed run logged after its last checkpoint
                kept = [ln for ln in metrics_path.read_text().splitlines() if json.loads(ln)["step"] <= step]
            checkpointing.write_atomic(metrics_path, "".join(ln + "\n" for ln in kept))
            writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=step + 1)
            log.info("model: %.1fM parameters, %d decoder layers; world size %d, ZeRO stage %d, %s",
                     self.n_params / 1e6, self.model_config.decoder_layers, self.world,
                     self.ds_config.get("zero_optimization", {}).get("stage", 0),
                     "bf16" if self.ds_config["bf16"].get("enabled") else "fp32")

        self.stop_requested = False
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)

        peak = device_peak_flops(self.device)
        tracker = LossTracker(TASKS, self.langs)
        batches = iter(self.stream)
        nonfinite_in_a_row = 0
        rng_seeded = False
        last_saved = step if self.resume else -1
        window = torch.zeros(4, dtype=torch.float64)  # tokens, samples, flops, time since last log
        window_start = time.perf_counter()
        # In a log file (no terminal) a bar redrawn every step would bury the log: redraw every 30 s there.
        bar = tqdm(total=total, initial=step, desc="pretrain", disable=rank != 0, dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30)
        exit_code = 0
        while step < total:
            step_sums = torch.zeros(3, dtype=torch.float64)  # loss sum, scored tokens, all tokens (this rank)
            step_start = time.perf_counter()
            micro, grad_norm = 0, None
            while micro < self.gas:
                batch = next(batches)
                if not rng_seeded:
                    # Dropout RNG is set here, after the engine and the loader have started (ZeRO-3's set-up and
                    # loader workers may draw from it), so every stage and every resume sees the same masks.
                    if rng_state is not None:
                        checkpointing.set_rng_state(rng_state)
                    else:
                        torch.manual_seed(cfg.train.seed + rank)  # dropout differs per rank, reproducibly
                    rng_seeded = True
                inputs = self._to_device(batch)
                out = self.engine(**inputs)
                if self._any_rank(not torch.isfinite(out.loss).item()):
                    nonfinite_in_a_row += 1
                    if rank == 0:
                        log.warning("step %d: non-finite loss on some rank; batch skipped (%d in a row)",
                                    step + 1, nonfinite_in_a_row)
                    if nonfinite_in_a_row >= cfg.train.max_nonfinite_in_a_row:
                        if rank == 0:
                            log.error("stopping: %d non-finite losses in a row (lower train.lr, check the data, "
                                      "or use bf16 rather than fp16)", nonfinite_in_a_row)
                        exit_code = 3
                        break
                    continue
                nonfinite_in_a_row = 0
                self.engine.backward(out.loss)
                if micro == self.gas - 1:
                    grad_norm = self._grad_norm() if self.engine.zero_optimization_stage() == 0 else None
                self.engine.step()
                micro += 1
                step_sums[0] += out.token_losses.double().sum().cpu()
                step_sums[1] += (batch["labels"] != -100).sum()
                tracker.add(out.token_losses, batch["labels"], batch["task"], batch["tgt_lang"])
                src_lens = batch["attention_mask"].sum(1)
                tgt_lens = batch["decoder_attention_mask"].sum(1)
                tokens = (src_lens.sum() + tgt_lens.sum()).item()
                step_sums[2] += tokens
                window[0] += tokens
                window[1] += 0 if batch.get("is_padding") else len(batch["task"])
                window[2] += model_flops(self.model_config, src_lens, tgt_lens)
            if exit_code:
                break
            step += 1
            if grad_norm is None:
                grad_norm = self._grad_norm()
            self._all_reduce(step_sums)
            loss = (step_sums[0] / step_sums[1]).item() if step_sums[1] > 0 else float("nan")
            lr = self.scheduler.get_last_lr()[0]
            if rank == 0:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                                        "tokens": int(step_sums[2].item()),
                                        "step_time_s": time.perf_counter() - step_start}) + "\n")
                writer.add_scalar("train/loss", loss, step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/grad_norm", grad_norm, step)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            bar.update(1)

            if step % cfg.train.log_every == 0 or step == total:
                window[3] = time.perf_counter() - window_start
                self._all_reduce(window[:3])
                by_key = tracker.reduce_and_reset(self._all_reduce)
                mem = self._all_reduce(torch.tensor([memory_gb(self.device)]), dist.ReduceOp.MAX).item()
                if rank == 0:
                    secs = window[3].item()
                    for key, value in by_key.items():
                        writer.add_scalar(f"train/loss_{key.replace('task/', '').replace('lang/', 'lang_')}",
                                          value, step)
                    writer.add_scalar("perf/tokens_per_s", window[0].item() / secs, step)
                    writer.add_scalar("perf/samples_per_s", window[1].item() / secs, step)
                    writer.add_scalar("perf/mfu", window[2].item() / secs / (peak * self.world), step)
                    writer.add_scalar("memory/peak_gb_per_rank", mem, step)
                    writer.flush()
                window.zero_()
                window_start = time.perf_counter()

            if cfg.train.dev_every and (step % cfg.train.dev_every == 0 or step == total):
                dev = self._dev_loss()
                if rank == 0 and dev is not None:
                    writer.add_scalar("dev/loss", dev, step)
                    log.info("step %d: dev loss %.4f", step, dev)

            stop = self._any_rank(self.stop_requested)
            if stop or step % cfg.train.save_every == 0 or step == total:
                checkpointing.save(self.engine, ckpt_root, step, loader_state=self.stream.state_dict(),
                                   run_state={"step": step, "config": cfg.to_dict()}, keep_last=cfg.train.keep_last)
                last_saved = step
            if stop:
                if rank == 0:
                    log.warning("stopped by signal at step %d; resume with --resume", step)
                break
        bar.close()
        if writer is not None:
            writer.close()
        if exit_code == 0 and rank == 0 and last_saved == step:
            log.info("done: step %d, checkpoint in %s", step, ckpt_root / checkpointing.tag_for(step))
        perf = self.out / "perf"
        perf.mkdir(parents=True, exist_ok=True)
        checkpointing.write_atomic(perf / f"rank{rank}.json", json.dumps({"peak_memory_gb": memory_gb(self.device)}))
        dist.barrier()
        _release_shm_buffers()
        return exit_code


def _release_shm_buffers() -> None:
    """Unlink this rank's DeepSpeed CPU all-reduce buffer (/dev/shm, ~70 MB a rank), which DeepSpeed never
    removes: on a CPU host every run would otherwise leave it behind in RAM-backed tmpfs. Safe once the
    last collective is done: the mapping lives on until the process exits."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (addr and port) or not os.path.isdir("/dev/shm"):
        return
    local_rank = os.environ.get("LOCAL_RANK", "0")
    for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{addr}_{port}_{local_rank}"):
        path.unlink(missing_ok=True)

