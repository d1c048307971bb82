#!/usr/bin/env python
"""What vocabulary trimming saves: parameters (exact), peak memory per rank and tokens/s before and after trimming,
under ZeRO-2 and ZeRO-3 on 2 ranks, at CINO-base-v2's vocabulary (135,140 with the language tags) and XLM-R's
(250,002).

    python benchmarks/bench_trim_vocab.py [--vocabs 135140,250002] [--kept N] [--configs zero2,zero3] [--ranks 2]
                                          [--layers 12] [--hidden 768] [--steps 4] [--params-only]

Trimming changes one thing in the model: the number of rows of the tied embedding / LM head (and its bias). So each
"before" model is a random SWCM model of the given shape with V rows, and the "after" model is the same shape with
the kept rows; every model is trained on the same demo shards (benchmarks/bench_train.py builds them and runs
`launch/pretrain.py`; tokens/s over the steps after the first, peak RSS per rank). Which rows are kept changes no
cost, only how many.

How many: --kept, by default the demo tokenizer's 8,007 ids (8,000 pieces, <pad>, <mask>, 5 language tags), a
vocabulary trained on the demo corpus: the stand-in for "CINO's vocabulary trimmed to the demo corpus", which cannot
be measured here without CINO's tokenizer. `convert_checkpoint.py trim-vocab` logs the number for a real model and
corpus; pass it as --kept (at least 8,007: the shards hold ids up to 8,006).

The parameter table is computed on the meta device (no memory) at the requested shape; the runs need several GiB
per rank at the CINO shape (12 layers, hidden 768): on a small machine run them smaller (--layers 2 --hidden 256)
and say so. Prints both tables and appends rows to benchmarks/results/bench_trim_vocab.csv; the ratios compare runs
of the same invocation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
from pathlib import Path

from bench_train import build_assets, run_one
from results import REPO as ROOT, RESULTS_DIR, append_csv, git_sha

RESULTS = RESULTS_DIR / "bench_trim_vocab.csv"
DEMO_IDS = 8007   # the demo tokenizer's ids: 8,000 sentencepiece pieces, the <pad> and <mask> of XLM-R's layout, 5 tags


def parameter_counts(vocab: int, layers: int, hidden: int) -> dict:
    """Exact parameter counts of the SWCM model at this shape (built on the meta device: no memory): all, and the
    vocabulary part (tied embedding rows + LM-head bias)."""
    import torch

    from swcm.modeling_swcm import SWCMConfig, SWCMForConditionalGeneration

    cfg = SWCMConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                     intermediate_size=4 * hidden, normal_layer_every=3)
    with torch.device("meta"):
        model = SWCMForConditionalGeneration(cfg)
    total = sum(p.numel() for p in model.parameters())   # parameters() yields the tied matrix once
    vocab_part = model.get_input_embeddings().weight.numel() + model.lm_head.bias.numel()
    return {"params": total, "vocab_params": vocab_part}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocabs", default="135140,250002", help="untrimmed vocabulary sizes (CINO-base-v2, XLM-R)")
    p.add_argument("--kept", type=int, default=DEMO_IDS, help="vocabulary size after trimming (default: the demo's)")
    p.add_argument("--configs", default="zero2,zero3")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--layers", type=int, default=12, help="encoder layers (CINO-base: 12)")
    p.add_argument("--hidden", type=int, default=768, help="hidden size (CINO-base: 768)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--params-only", action="store_true", help="print the exact parameter table, run nothing")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_trim_vocab"))
    args = p.parse_args(argv)
    vocabs = [int(v) for v in args.vocabs.split(",")]
    if args.kept < DEMO_IDS:
        p.error(f"--kept {args.kept}: at least {DEMO_IDS} (the demo shards use ids up to {DEMO_IDS - 1})")

    import torch

    sizes = [*vocabs, args.kept]
    counts = {v: parameter_counts(v, args.layers, args.hidden) for v in sizes}
    print(f"parameters at {args.layers} layers, hidden {args.hidden}:")
    print(f"{'vocab':>9}{'params':>14}{'vocab part':>14}{'share':>8}")
    for v in sizes:
        c = counts[v]
        print(f"{v:>9,}{c['params']:>14,}{c['vocab_params']:>14,}{c['vocab_params'] / c['params']:>8.1%}")
    sha, today = git_sha(), datetime.date.today().isoformat()
    device = (torch.cuda.get_device_name() if torch.cuda.is_available()
              else f"cpu ({platform.processor() or 'x86_64'}, {os.cpu_count()} cores)")
    shape = {"layers": args.layers, "hidden": args.hidden}
    if args.params_only:
        append_csv(RESULTS, [{"date": today, "git": sha, "device": "meta", "torch": torch.__version__, **shape,
                              "ranks": "", "config": "params", "vocab": v, "params": counts[v]["params"],
                              "vocab_params": counts[v]["vocab_params"], "tokens_per_s": "", "peak_gb_per_rank": "",
                              "trimmed_speed_x": "", "trimmed_memory_x": ""} for v in sizes])
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for v in sizes:
        vdir = work / f"v{v}"
        vdir.mkdir(exist_ok=True)
        first = work / f"v{sizes[0]}"
        for shared in ("tokenizer", "shards"):   # one tokenizer and one shard set for every size: same data
            if vdir != first and (first / shared).is_dir() and not (vdir / shared).exists():
                shutil.copytree(first / shared, vdir / shared)
        config = build_assets(vdir, args.layers, v, hidden=args.hidden)
        used = json.loads((vdir / "shards" / "index.json").read_text())["tokenizer"]["vocab_size"]
        if used != DEMO_IDS:
            raise SystemExit(f"error: {vdir / 'shards' / 'index.json'}: tokenizer.vocab_size {used}, "
                             f"expected {DEMO_IDS}")
        for name in args.configs.split(","):
            print(f"running vocab {v:,} {name} ...", flush=True)
            results[v, name] = run_one(config, name, vdir, args.steps, args.ranks, bf16=False, ckpt=True)
        shutil.rmtree(vdir / "model", ignore_errors=True)   # GBs at full size; rebuilt on the next invocation

    print(f"\n{args.ranks} ranks, {args.layers} layers, hidden {args.hidden}, {device}, torch {torch.__version__}, "
          f"git {sha}; ratios: this vocab / {args.kept:,} kept")
    print(f"{'vocab':>9}{'config':>8}{'tokens/s':>10}{'peak GB/rank':>14}{'speed x':>9}{'memory x':>10}")
    rows = []
    for (v, name), r in results.items():
        after = results[args.kept, name]
        speed, memory = after["tokens_per_s"] / r["tokens_per_s"], r["peak_gb_per_rank"] / after["peak_gb_per_rank"]
        print(f"{v:>9,}{name:>8}{r['tokens_per_s']:>10.1f}{r['peak_gb_per_rank']:>14.2f}{speed:>9.2f}{memory:>10.2f}")
        rows.append({"date": today, "git": sha, "device": device, "torch": torch.__version__, **shape,
                     "ranks": args.ranks, "config": name, "vocab": v, "params": counts[v]["params"],
                     "vocab_params": counts[v]["vocab_params"], "tokens_per_s": round(r["tokens_per_s"], 1),
                     "peak_gb_per_rank": round(r["peak_gb_per_rank"], 3),
                     # trimmed tokens/s over this run's, this run's peak over the trimmed one's (1.0 on the kept row)
                     "trimmed_speed_x": round(speed, 3), "trimmed_memory_x": round(memory, 3)})
    append_csv(RESULTS, rows)


if __name__ == "__main__":
    main()
