#!/usr/bin/env python
"""Training throughput and peak memory per rank for each ZeRO config, on a model large enough for
partitioning to show (default: CINO-base-v2 width and vocabulary, 6 encoder layers, about 240M parameters).

    python benchmarks/bench_train.py [--configs zero0,zero1,zero2,zero3,zero3_offload] [--steps 4] [--layers 6]
                                     [--bf16] [--no-activation-checkpointing]

Each config is one `deepspeed --num_gpus N launch/pretrain.py` run on the demo text; tokens/s is measured over
the steps after the first (which pays for allocation and warm-up), peak memory is each rank's peak RSS (CPU) or
CUDA allocator peak (GPU). glibc is told to return large frees to the OS (`MALLOC_MMAP_THRESHOLD_`), else RSS
keeps memory the process no longer uses. Activation checkpointing is on by default (as ZeRO-3 is run at scale):
activations are not what ZeRO partitions, and left in they add the same amount to every stage. Prints a table
and appends rows to benchmarks/results/bench_train.csv (config names carry +bf16 / +ckpt).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from random_model import build_random_swcm
from results import REPO as ROOT, RESULTS_DIR, append_csv, git_sha

RESULTS = RESULTS_DIR / "bench_train.csv"
DEMO = ROOT / "data" / "demo"


def build_assets(work: Path, layers: int, vocab: int, hidden: int = 768) -> Path:
    """A random SWCM model of CINO-base-v2 width (hidden 768, 12 heads, FFN 3072; heads and FFN scale with `hidden`
    as in XLM-R, one head per 64 dimensions), `vocab` rows, with the demo tokenizer, and shards of the demo text;
    returns the run config path."""
    model_dir = work / "model"
    build_random_swcm(model_dir, layers=layers, vocab=vocab, hidden=hidden, heads=hidden // 64, ffn=4 * hidden)
    shards = work / "shards"
    if not (shards / "index.json").exists():
        ntrex = DEMO / "parallel" / "ntrex128" / "ntrex128.train"
        subprocess.run([sys.executable, str(ROOT / "launch" / "prepare_data.py"), "--tokenizer", str(model_dir),
                        "--out", str(shards), "--max-len", "128", "--mono", f"bo={DEMO / 'mono' / 'bo.txt'}",
                        "--mono", f"kk={DEMO / 'mono' / 'kk.txt'}",
                        "--parallel", f"zh-bo={ntrex}.zh,{ntrex}.bo"], check=True)
    config = {"model": {"path": str(model_dir)},
              "data": {"shards": str(shards), "max_tokens": 4096},
              "train": {"max_steps": 1000, "save_every": 1000000, "dev_every": 0, "log_every": 1,
                        "micro_batch_size": 4, "lr": 1e-4}}
    path = work / "run.json"
    path.write_text(json.dumps(config))
    return path


def run_one(config: Path, ds_name: str, work: Path, steps: int, ranks: int, bf16: bool, ckpt: bool) -> dict:
    ds_path = ROOT / "ds_configs" / f"{ds_name}.json"
    if bf16:  # the paper's precision, forced on (the shipped files say "auto": bf16 only on GPUs that have it)
        ds = json.loads(ds_path.read_text())
        ds["bf16"] = {"enabled": True}
        ds_path = work / f"{ds_name}_bf16.json"
        ds_path.write_text(json.dumps(ds))
    label = ds_name + ("+bf16" if bf16 else "") + ("+ckpt" if ckpt else "")
    out = work / f"run_{label.replace('+', '_')}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), OMP_NUM_THREADS="1",
               MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072", TOKENIZERS_PARALLELISM="false")
    if env["DS_ACCELERATOR"] != "cpu":
        env.pop("OMP_NUM_THREADS")
    cmd = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", str(ranks), str(ROOT / "launch" / "pretrain.py"),
           "--config", str(config), "--deepspeed_config", str(ds_path),
           "--out", str(out), "--max-steps", str(steps)]
    if ckpt:
        cmd += ["--set", "model.gradient_checkpointing=true"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{ds_name} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows
    tokens = sum(r["tokens"] for r in timed)
    secs = sum(r["step_time_s"] for r in timed)
    peaks = [json.loads((out / "perf" / f"rank{r}.json").read_text())["peak_memory_gb"] for r in range(ranks)]
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the final save: GBs per run, not needed here
    return {"config": label, "tokens_per_s": tokens / secs, "s_per_step": secs / len(timed),
            "peak_gb_per_rank": max(peaks), "loss_last": rows[-1]["loss"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="zero0,zero1,zero2,zero3,zero3_offload")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=135_140, help="CINO-base-v2's 135,135 + 5 language tags")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_train"))
    p.add_argument("--bf16", action="store_true", help="train in bf16 (as the paper recipe does on GPUs)")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute each layer in the backward (model.gradient_checkpointing)")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = build_assets(work, args.layers, args.vocab)

    import torch

    from swcm.modeling_swcm import SWCMConfig, SWCMForConditionalGeneration

    results = []
    for name in args.configs.split(","):
        print(f"running {name} ...", flush=True)
        results.append(run_one(config, name, work, args.steps, args.ranks, args.bf16, args.activation_checkpointing))
    with torch.device("meta"):
        n_params = sum(p.numel() for p in SWCMForConditionalGeneration(
            SWCMConfig.from_pretrained(str(work / "model"))).parameters())
    base = next((r for r in results if r["config"].split("+")[0] == "zero0"), None)
    sha = git_sha()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or 'x86_64'}, {os.cpu_count()} cores)"
    print(f"\n{n_params / 1e6:.0f}M parameters, {args.ranks} ranks, {device}, torch {torch.__version__}, git {sha}")
    print(f"{'config':<16}{'tokens/s':>10}{'s/step':>9}{'peak GB/rank':>14}{'vs zero0':>10}")
    rows = []
    for r in results:
        ratio = r["peak_gb_per_rank"] / base["peak_gb_per_rank"] if base else float("nan")
        print(f"{r['config']:<16}{r['tokens_per_s']:>10.1f}{r['s_per_step']:>9.2f}{r['peak_gb_per_rank']:>14.2f}"
              f"{ratio:>10.2f}")
        rows.append({"date": datetime.date.today().isoformat(), "git": sha, "device": device,
                     "torch": torch.__version__, "params_m": round(n_params / 1e6, 1), "ranks": args.ranks,
                     "config": r["config"], "tokens_per_s": round(r["tokens_per_s"], 1),
                     "s_per_step": round(r["s_per_step"], 3), "peak_gb_per_rank": round(r["peak_gb_per_rank"], 3),
                     "peak_vs_zero0": round(ratio, 3)})
    append_csv(RESULTS, rows)

if __name__ == "__main__":
    main()
