#!/usr/bin/env python
"""Benchmark the pretraining loader on real Tibetan text: samples/s and tokens/s per loader worker, with DAE
noise (span masking + sentence permutation), shard reading, sha256 checks, bucketing and collation included.

    python benchmarks/bench_data.py [--text data/demo/mono/bo.txt] [--tokenizer DIR] [--epochs 3]

Steps: (1) a tokenizer (given, or the demo tokenizer trained on data/demo with language tags added),
(2) prepare_data on --text into a temporary shard set, (3) one loader worker in the main process
(num_workers=0) over --epochs epochs -- the per-worker figure -- and (4) the whole loader with --workers
DataLoader workers. tokens/s counts the encoder + decoder tokens the trainer receives, padding excluded.
Samples per CPU-second (main process + workers) is the per-core figure that holds on a shared machine,
where wall-clock rates depend on what else runs; the 1-minute load average is recorded beside it.
A row per measurement is appended to benchmarks/results/bench_data.csv. Target: >= 2,000 samples/s per core.
"""

import argparse
import datetime
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "bench_data.csv"

from results import append_csv, git_sha  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def versions() -> str:
    import numpy
    import torch
    import transformers
    import webdataset

    return (f"python {platform.python_version()}; torch {torch.__version__}; numpy {numpy.__version__}; "
            f"webdataset {webdataset.__version__}; transformers {transformers.__version__}")


def tokenizer_dir(args, tmp: Path) -> Path:
    if args.tokenizer:
        return Path(args.tokenizer)
    from swcm.assets import build_demo_tokenizer
    from swcm.tokenization import add_language_tags

    tok = build_demo_tokenizer(tmp / "tokenizer", vocab_size=args.vocab_size)
    add_language_tags(tok)
    tok.save_pretrained(str(tmp / "tokenizer"))
    return tmp / "tokenizer"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(cfg, tokenizer, epochs: int) -> tuple[int, int, float, float]:
    """Samples, tokens (non-padding encoder + decoder), wall seconds and CPU seconds (main + workers) for
    `epochs` epochs of rank 0 of 1."""
    from swcm.data.stream import PretrainStream

    stream = PretrainStream(cfg, tokenizer, rank=0, world_size=1)
    samples = tokens = 0
    start, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(epochs):
        for batch in stream.epoch_batches():
            samples += len(batch["sample_id"])
            tokens += int(batch["attention_mask"].sum()) + int(batch["decoder_attention_mask"].sum())
    return samples, tokens, time.perf_counter() - start, cpu_seconds() - cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", default=str(REPO / "data/demo/mono/bo.txt"), help="monolingual text to stream")
    p.add_argument("--lang", default="bo")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir with language tags (default: train the demo one)")
    p.add_argument("--vocab-size", type=int, default=8000, help="demo tokenizer size when none is given")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the whole-loader figure")
    p.add_argument("--out", default=str(RESULTS), help="CSV to append to")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    from swcm.data.config import DataConfig
    from swcm.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok_dir = tokenizer_dir(args, tmp)
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        index = prepare(tok_dir, tmp / "shards", mono=[(args.lang, args.text)], samples_per_shard=1000,
                        show_progress=False)
        rows = []
        for workers in (0, args.workers):
            cfg = DataConfig(shards=str(tmp / "shards"), num_workers=workers, mt_ratio=0.0)
            samples, tokens, seconds, cpu = run(cfg, tokenizer, args.epochs)
            per = max(1, workers)   # workers=0: the main process is the one worker
            rows.append({
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "git_sha": git_sha(), "versions": versions(), "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(), "text": Path(args.text).name, "vocab": len(tokenizer),
                "samples_in_set": index["totals"]["all"]["samples"], "workers": workers, "epochs": args.epochs,
                "load_avg_1m": round(os.getloadavg()[0], 2), "samples": samples, "tokens": tokens,
                "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                "samples_per_s": round(samples / seconds, 1), "tokens_per_s": round(tokens / seconds),
                "samples_per_s_per_worker": round(samples / seconds / per, 1),
                "tokens_per_s_per_worker": round(tokens / seconds / per),
                "samples_per_cpu_s": round(samples / cpu, 1), "tokens_per_cpu_s": round(tokens / cpu)})
            r = rows[-1]
            print(f"workers={workers} ({'in-process' if workers == 0 else 'DataLoader'}): {samples} samples, "
                  f"{tokens} tokens in {seconds:.2f}s -> {r['samples_per_s']:.0f} samples/s, {r['tokens_per_s']} "
                  f"tokens/s; per worker {r['samples_per_s_per_worker']:.0f} samples/s, "
                  f"{r['tokens_per_s_per_worker']} tokens/s; {r['samples_per_cpu_s']:.0f} samples and "
                  f"{r['tokens_per_cpu_s']} tokens per CPU-second (load average {r['load_avg_1m']})")
    out = Path(args.out)
    append_csv(out, rows)
    print(f"appended {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
