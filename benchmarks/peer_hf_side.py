#!/usr/bin/env python
"""The Hugging Face side of benchmarks/bench_peer.py: `Seq2SeqTrainer` + `DataCollatorForSeq2Seq` + DeepSpeed on an
swcm export, the way a user without swcm would fine-tune it (the model card's feature function), one process a rank:

    deepspeed --num_gpus 2 benchmarks/peer_hf_side.py --model EXPORT --train task.jsonl --ds-config ds.json \
        --out DIR --steps 12 --micro-batch 8 [--plan SWCM_RUN/samples]

swcm is made unimportable here, so the export's modeling file runs as it does for such a user (its plain LM head:
full B x T x V logits, no swcm kernels). Each rank writes DIR/steps_rank{R}.jsonl: per optimizer step its wall-clock
end, the tokens it ran (source tokens + scored target tokens, counted from the inputs each step receives) and, on
rank 0, the loss Hugging Face logs for the step (the mean over ranks). `--plan` gives every rank, step by step, the
examples swcm's run trained on (its `train.sample_log` files), so both sides see the same batches and their losses
can be compared; without it Hugging Face draws its own random batches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def hide_swcm() -> None:
    """Make swcm and its kernels unimportable in this process, as where swcm is not installed: drop the editable
    install's import hook and this repository's entries on sys.path. (A finder that raises on those names instead
    would break transformers, which probes `importlib.util.find_spec("kernels")` for Hugging Face's own package.)"""
    def editable_hook(finder) -> bool:
        return getattr(finder if isinstance(finder, type) else type(finder), "__module__", "").startswith(
            "__editable___swcm")

    def in_repo(entry: str) -> bool:   # the venv may live inside the checkout: its site-packages stays
        path = Path(entry or ".").resolve()
        return path.is_relative_to(REPO) and not path.is_relative_to(Path(sys.prefix).resolve())

    sys.meta_path[:] = [f for f in sys.meta_path if not editable_hook(f)]
    sys.path[:] = [p for p in sys.path if not in_repo(p)]
    for name in [m for m in sys.modules if m.partition(".")[0] in ("swcm", "swcm_kernels", "kernels")]:
        del sys.modules[name]


def patch_accelerate_for_cpu_ranks() -> None:
    """Let accelerate start DeepSpeed on CPU ranks.

    As shipped (accelerate 1.16), a rank started by the DeepSpeed launcher on a machine without an accelerator gets
    no distributed backend: `PartialState._prepare_backend` finds no device backend for "cpu" and answers
    DistributedType.NO (the MULTI_CPU branch is taken only with `use_cpu=True`, which in turn skips DeepSpeed). Each
    rank then believes it is alone, and DeepSpeed asserts that train_batch_size != micro-batch x world size. Here
    such a rank gets gloo (what DeepSpeed itself uses on CPU) and MULTI_CPU, and accelerate's DeepSpeed path runs."""
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    original = PartialState._prepare_backend

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        got_backend, kind = original(self, cpu, sagemaker_dp, backend)
        if kind == DistributedType.NO and not cpu and int(os.environ.get("LOCAL_RANK", -1)) != -1 \
                and not torch.cuda.is_available():
            return "gloo", DistributedType.MULTI_CPU
        return got_backend, kind

    PartialState._prepare_backend = prepare_backend


def features(tok, ex: dict, max_len: int) -> dict:
    """The model card's feature function: `<s> <src_lang> source </s>` -> labels `<tgt_lang> target </s>`, each side
    truncated to `max_len` tokens as swcm's loader truncates them (special tokens included)."""
    enc = tok(f"<{ex['src_lang']}>" + ex["source"], truncation=True, max_length=max_len)
    target = tok(text_target=f"<{ex['tgt_lang']}>" + ex["target"], truncation=True, max_length=max_len)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": target["input_ids"][1:]}


def read_plan(plan_dir: Path, rank: int, file_name: str) -> list[list[int]]:
    """Per step, the 0-based line indices of this rank's examples in swcm's sample log (ids `file:line`)."""
    steps = []
    for line in (plan_dir / f"rank{rank}.jsonl").read_text().splitlines():
        ids = json.loads(line)["ids"]
        steps.append([int(i.rpartition(":")[2]) - 1 for i in ids if i.rpartition(":")[0] == file_name])
    return steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the swcm export (HF directory)")
    p.add_argument("--train", required=True, help="task JSONL: {source, target, src_lang, tgt_lang} a line")
    p.add_argument("--ds-config", required=True, help="DeepSpeed JSON (the same zero_optimization block as swcm's)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--micro-batch", type=int, required=True)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--plan", default=None, help="swcm run's samples/ directory: train on the same batches")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # passed by the launcher
    args = p.parse_args(argv)

    hide_swcm()
    patch_accelerate_for_cpu_ranks()
    import torch
    from torch.utils.data import DataLoader
    from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                              Seq2SeqTrainingArguments, TrainerCallback)

    rank = int(os.environ.get("RANK", "0"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model, trust_remote_code=True)
    lines = [json.loads(x) for x in Path(args.train).read_text(encoding="utf-8").splitlines() if x.strip()]
    dataset = [features(tok, ex, args.max_len) for ex in lines]
    collator = DataCollatorForSeq2Seq(tok, model=model, pad_to_multiple_of=8)
    ds_config = json.loads(Path(args.ds_config).read_text())

    run = {"tokens": 0}

    class Trainer(Seq2SeqTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            # What this micro-batch runs: source tokens + scored target tokens (as swcm counts them).
            run["tokens"] += int(inputs["attention_mask"].sum()) + int((inputs["labels"] != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

        def get_train_dataloader(self):
            if args.plan is None:
                return super().get_train_dataloader()
            plan = read_plan(Path(args.plan), rank, Path(args.train).name)
            return DataLoader(dataset, batch_sampler=plan, collate_fn=collator, num_workers=0)

    class StepRows(TrainerCallback):
        def __init__(self):
            self.rows = []

        def on_step_end(self, targs, state, control, **kw):
            self.rows.append({"step": state.global_step, "time": time.time(), "tokens": run["tokens"]})
            run["tokens"] = 0

        def on_log(self, targs, state, control, logs=None, **kw):
            if logs and "loss" in logs and self.rows and self.rows[-1]["step"] == state.global_step:
                self.rows[-1]["loss"] = logs["loss"]

        def on_train_end(self, targs, state, control, **kw):
            path = out / f"steps_rank{rank}.jsonl"
            path.with_suffix(".partial").write_text("".join(json.dumps(r) + "\n" for r in self.rows))
            path.with_suffix(".partial").replace(path)   # complete or absent

    targs = Seq2SeqTrainingArguments(
        output_dir=str(out / "hf_trainer"), per_device_train_batch_size=args.micro_batch, max_steps=args.steps,
        learning_rate=args.lr, adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-6, weight_decay=0.01,
        lr_scheduler_type="linear", warmup_steps=1, max_grad_norm=1.0, optim="adamw_torch_fused",
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, seed=args.seed,
        dataloader_num_workers=0, deepspeed=ds_config, use_cpu=False)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset, processing_class=tok, data_collator=collator,
                      callbacks=[StepRows()])
    trainer.train()
    del trainer
    torch.distributed.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
