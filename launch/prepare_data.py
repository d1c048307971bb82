#!/usr/bin/env python
"""Turn raw text into tokenised webdataset shards + index.json for swcm pretraining (a datatrove pipeline).

    python launch/prepare_data.py --tokenizer runs/demo/swcm-init \\
        --mono bo=data/demo/mono/bo.txt,data/demo/mono/bo_speech.txt --mono kk='mc2/kk/*.jsonl.gz' \\
        --parallel bo-zh=data/demo/parallel/ntrex128/ntrex128.train.bo,data/demo/parallel/ntrex128/ntrex128.train.zh \\
        --parallel-jsonl extra_pairs.jsonl --out runs/demo/shards/train [--tasks 8 --workers 4]

A PATH is a file, a glob, a directory of files or a saved `datasets` directory: plain text (one document per line),
JSONL (the document in --text-field, default `text`) or Parquet (the column --text-field), each optionally .gz,
.zst, .bz2 or .xz. Parallel: aligned plain-text files (line i translates line i), or records
{"src", "tgt", "src_lang", "tgt_lang"} in JSONL / Parquet / datasets (--parallel-jsonl). Each language (mono) and
language pair (parallel) becomes its own stream of shards. Skipped lines are counted per file and reason (printed
and kept in index.json); bad input stops with one `error: ...` line and exit status 2; SIGINT / SIGTERM with
`error: interrupted` and 130 / 143. The shard set is built beside --out and moved there only when complete; a run
killed outright resumes, redoing only unfinished tasks, when the same command is run again. With --executor slurm
the tasks are submitted as a SLURM job array plus a merge job, and the command returns. See docs/data.md.
"""

import argparse
import json
import logging
import os
import sys


def _mono(spec: str) -> list[tuple[str, str]]:
    if "=" not in spec:
        raise argparse.ArgumentTypeError(f"--mono {spec!r}: expected LANG=PATH[,PATH...]")
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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="the model's tokenizer directory (with language tags)")
    p.add_argument("--mono", type=_mono, action="append", default=[], metavar="LANG=PATH[,PATH...]",
                   help="monolingual text: a file, glob, directory or saved dataset per PATH (repeatable)")
    p.add_argument("--parallel", type=_parallel, action="append", default=[], metavar="SRC-TGT=SRCFILE,TGTFILE",
                   help="aligned parallel plain-text files, compressed or not (repeatable)")
    p.add_argument("--parallel-jsonl", action="append", default=[], metavar="PATH",
                   help='parallel records {"src","tgt","src_lang","tgt_lang"}: JSONL, Parquet or a saved dataset '
                        '(repeatable)')
    p.add_argument("--text-field", default="text",
                   help="the JSONL field / Parquet column holding a monolingual document (default: text)")
    p.add_argument("--out", required=True, help="output directory for shards, lengths.npz and index.json")
    p.add_argument("--max-len", type=int, default=256,
                   help="max tokens of a sample including <s> <lang> </s> (default 256, the paper's length)")
    p.add_argument("--samples-per-shard", type=int, default=2_000,
                   help="samples per tar shard (default 2000, 1-5 MB: even a low-resource corpus of a few tens of "
                        "MB then has enough shards to spread over ranks x loader workers)")
    p.add_argument("--executor", choices=("local", "slurm", "ray"), default="local",
                   help="local processes (default), a SLURM job array, or a Ray cluster (needs the ray package)")
    p.add_argument("--workers", type=_positive, default=None,
                   help="processes running tasks at once (local: default all cores; slurm: array tasks at once, "
                        "default no limit)")
    p.add_argument("--tasks", type=_positive, default=None,
                   help="datatrove tasks the records are split over (default: --workers; the same inputs and "
                        "--tasks give a byte-identical shard set)")
    slurm = p.add_argument_group("slurm (--executor slurm)")
    slurm.add_argument("--partition", help="SLURM partition of the tasks and the merge job")
    slurm.add_argument("--time", default="4:00:00", help="time limit of each array task (default 4:00:00)")
    slurm.add_argument("--cpus-per-task", type=_positive, default=1, help="CPUs per array task (default 1)")
    slurm.add_argument("--mem-per-cpu-gb", type=_positive, default=2, help="memory per CPU in GB (default 2)")
    slurm.add_argument("--qos", default=None, help="SLURM quality of service (default: the cluster's)")
    slurm.add_argument("--logs", default=None,
                       help="job scripts' and tasks' logs (default: <out>.prepare-logs beside --out)")
    p.add_argument("--overwrite", action="store_true", help="replace a shard set of ours in --out")
    p.add_argument("--quiet", action="store_true", help="warnings only (no per-task progress lines)")
    args = p.parse_args(argv)
    if args.executor == "slurm" and not args.partition:
        p.error("--executor slurm needs --partition")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    workers = args.workers or (cores if args.executor == "local" else None)
    tasks = args.tasks or workers or 1
    if args.executor == "local":
        # Read by the tokenizers library when its thread pool starts, so set before any import: the cores are
        # shared by the worker processes rather than each worker starting a thread per core.
        os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, cores // min(workers, tasks))))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from swcm.data.prepare import inputs_from, prepare, submit_slurm
    from swcm.data.shards import DataError
    from swcm.cli_exit import interrupts_raised, print_error

    mono = [m for group in args.mono for m in group]
    given = sys.argv[1:] if argv is None else list(argv)
    common = dict(max_len=args.max_len, samples_per_shard=args.samples_per_shard, overwrite=args.overwrite,
                  args=given, text_field=args.text_field)
    try:
        with interrupts_raised():
            if args.executor == "slurm":
                submitted = submit_slurm(
                    args.tokenizer, args.out, inputs=inputs_from(mono, args.parallel, args.parallel_jsonl),
                    tasks=tasks, logs=args.logs, **common,
                    slurm={"partition": args.partition, "time": args.time, "cpus_per_task": args.cpus_per_task,
                           "mem_per_cpu_gb": args.mem_per_cpu_gb, "workers": workers, "qos": args.qos})
                print(json.dumps(submitted))
                return 0
            index = prepare(args.tokenizer, args.out, mono=mono, parallel=args.parallel,
                            parallel_jsonl=args.parallel_jsonl, show_progress=not args.quiet, tasks=tasks,
                            workers=workers, executor=args.executor, **common)
    except DataError as e:
        print_error(str(e))
        return 2
    except KeyboardInterrupt as e:   # Ctrl-C, or swcm.cli_exit.Interrupted for SIGINT / SIGTERM
        print_error(f"interrupted; no partial shard set was left in {args.out}")
        return getattr(e, "exit_code", 130)
    summary = {"out": args.out, "shards": len(index["shards"]), "totals": index["totals"],
               "unk_share": {lang: u["share"] for lang, u in index["unk"].items()},
               "skipped": {f: r for rep in index["inputs"] for f, r in rep["skipped"].items() if r}}
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    from swcm.fast_exit import skip_final_gc

    skip_final_gc()
    sys.exit(main())
