#!/usr/bin/env python
"""Turn raw text into tokenised webdataset shards + index.json for swcm pretraining.

    python launch/prepare_data.py --tokenizer runs/demo/swcm-init \
        --mono bo=data/demo/mono/bo.txt,data/demo/mono/bo_speech.txt --mono kk=data/demo/mono/kk.txt \
        --parallel bo-zh=data/demo/parallel/ntrex128/ntrex128.train.bo,data/demo/parallel/ntrex128/ntrex128.train.zh \
        --parallel-jsonl extra_pairs.jsonl --out runs/demo/shards/train [--max-len 256] [--samples-per-shard N]

Mono files hold one document per line; parallel files are aligned line by line; JSONL records are
{"src": ..., "tgt": ..., "src_lang": ..., "tgt_lang": ...}. Each language (mono) and language pair (parallel)
becomes its own stream of shards. Skipped lines are counted per file and reason (printed and kept in
index.json); an empty input, an input with no usable line or misaligned parallel files stop with one
`error: ...` line and exit status 2. The shard set is built beside --out and moved there only when complete:
a failed or interrupted run leaves --out as it was. See docs/data.md.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _mono(spec: str) -> list[tuple[str, str]]:
    if "=" not in spec:
        raise argparse.ArgumentTypeError(f"--mono {spec!r}: expected LANG=FILE[,FILE...]")
    lang, files = spec.split("=", 1)
    return [(lang, f) for f in files.split(",") if f]


def _parallel(spec: str) -> tuple[str, str, str, str]:
    try:
        pair, files = spec.split("=", 1)
        src_lang, tgt_lang = pair.split("-", 1)
        src, tgt = files.split(",")
    except ValueError:
        raise argparse.ArgumentTypeError(f"--parallel {spec!r}: expected SRC-TGT=SRCFILE,TGTFILE") from None
    return src_lang, tgt_lang, src, tgt


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="the model's tokenizer directory (with language tags)")
    p.add_argument("--mono", type=_mono, action="append", default=[], metavar="LANG=FILE[,FILE...]",
                   help="monolingual text, one document per line (repeatable)")
    p.add_argument("--parallel", type=_parallel, action="append", default=[], metavar="SRC-TGT=SRCFILE,TGTFILE",
                   help="aligned parallel files (repeatable)")
    p.add_argument("--parallel-jsonl", action="append", default=[], metavar="FILE",
                   help='parallel JSONL, one {"src","tgt","src_lang","tgt_lang"} per line (repeatable)')
    p.add_argument("--out", required=True, help="output directory for shards, lengths.npz and index.json")
    p.add_argument("--max-len", type=int, default=256,
                   help="max tokens of a sample including <s> <lang> </s> (default 256, the paper's length)")
    p.add_argument("--samples-per-shard", type=int, default=2_000,
                   help="samples per tar shard (default 2000, 1-5 MB: even a low-resource corpus of a few tens of "
                        "MB then has enough shards to spread over ranks x loader workers)")
    p.add_argument("--workers", type=int, default=None,
                   help="threads the Rust tokenizer uses for batch encoding (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard set in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.workers:   # read by the tokenizers library when it starts its thread pool, so set before import
        os.environ["RAYON_NUM_THREADS"] = str(args.workers)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from swcm.data.prepare import prepare
    from swcm.data.shards import DataError

    try:
        index = prepare(args.tokenizer, args.out, mono=[m for group in args.mono for m in group],
                        parallel=args.parallel, parallel_jsonl=args.parallel_jsonl, max_len=args.max_len,
                        samples_per_shard=args.samples_per_shard, overwrite=args.overwrite,
                        args=sys.argv[1:] if argv is None else list(argv), show_progress=not args.quiet)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; no partial shard set was left in {args.out}", file=sys.stderr)
        return 130
    summary = {"out": args.out, "shards": len(index["shards"]), "totals": index["totals"],
               "skipped": {f: r for rep in index["inputs"] for f, r in rep["skipped"].items() if r}}
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
