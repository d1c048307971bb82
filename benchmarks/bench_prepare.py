#!/usr/bin/env python
"""prepare_data.py throughput and peak memory against input size and tasks x workers, as CSV rows.

    python benchmarks/bench_prepare.py [--sizes 25,100,400] [--layouts 1x1,2x2] [--format txt|jsonl.gz]
        [--text data/demo/mono/bo.txt] [--tokenizer DIR] [--baseline-rev 49fb54a]

The input is the given text (the demo's Tibetan by default: long lines, the slowest script to tokenise) repeated
to each size in MB. Each run is `launch/prepare_data.py --tasks T --workers W` in a subprocess, with the
tokenizer single-threaded (TOKENIZERS_PARALLELISM=false) so that MB/s per core compares across layouts and
machines. Peak memory is sampled every 100 ms: PSS summed over the whole process tree (the coordinator, its workers
and datatrove's manager process) and the RSS of the largest single process. `--baseline-rev` also times the
prepare of that git revision (one process, whole files in memory) on the same input, for the same machine and load. Rows go to
benchmarks/results/bench_prepare.csv with the git sha, versions, cores and the load average at the start of
each run: on a shared machine, say so next to any figure quoted from here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench_data import tokenizer_dir   # the same --tokenizer / demo-tokenizer choice as bench_data
from results import REPO, RESULTS_DIR, append_csv, git_sha

POLL_S = 0.1    # memory sampling period: short beside a run of seconds, long enough not to load the machine
MB = 1 << 20

BASELINE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("baseline_prepare", sys.argv[1])
mod = sys.modules["baseline_prepare"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
mod.prepare(sys.argv[2], sys.argv[3], mono=[("bo", sys.argv[4])], show_progress=False)
"""


def versions() -> str:
    from importlib.metadata import version

    return f"python {sys.version.split()[0]}; " + "; ".join(f"{p} {version(p)}" for p in
                                                            ("datatrove", "tokenizers", "transformers"))


def make_input(text: Path, size_mb: int, fmt: str, out: Path) -> Path:
    """`text` repeated, whole lines, until `size_mb` MB of text; plain or as gzipped JSONL records."""
    import gzip
    import json

    lines = text.read_bytes().splitlines(keepends=True)
    path = out / f"bo-{size_mb}mb.{fmt}"
    written = 0
    opener = gzip.open if fmt == "jsonl.gz" else open
    with opener(path, "wb") as f:
        while written < size_mb * MB:
            for line in lines:
                if fmt == "jsonl.gz":
                    f.write(json.dumps({"text": line.decode().rstrip("\n")}, ensure_ascii=False).encode() + b"\n")
                else:
                    f.write(line)
                written += len(line)
                if written >= size_mb * MB:
                    break
    return path


def measure(cmd: list[str], env: dict) -> tuple[float, float, float, int]:
    """Wall seconds, peak memory of the process tree (MB, summed PSS: a forked helper's pages shared with its
    parent count once), peak RSS of one process (MB), exit status."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    tree_peak = proc_peak = 0
    while proc.poll() is None:
        try:
            mem = [p.memory_full_info() for p in [root, *root.children(recursive=True)]]
        except psutil.Error:
            mem = []
        if mem:
            tree_peak = max(tree_peak, sum(m.pss for m in mem))
            proc_peak = max(proc_peak, max(m.rss for m in mem))
        time.sleep(POLL_S)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read()
    if proc.returncode:
        print(stderr[-3000:], file=sys.stderr)
    return wall, tree_peak / MB, proc_peak / MB, proc.returncode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="25,100,400", help="input sizes in MB, comma-separated (default 25,100,400)")
    p.add_argument("--layouts", default="1x1,2x2", help="TASKSxWORKERS runs, comma-separated (default 1x1,2x2)")
    p.add_argument("--format", choices=("txt", "jsonl.gz"), default="txt", help="input format (default txt)")
    p.add_argument("--text", default=str(REPO / "data/demo/mono/bo.txt"), help="text to repeat (default: demo bo)")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir with language tags (default: train the demo one)")
    p.add_argument("--vocab-size", type=int, default=8000, help="demo tokenizer size when none is given")
    p.add_argument("--baseline-rev", default=None, help="also time the prepare.py of this git revision (1 process)")
    p.add_argument("--csv", default=str(RESULTS_DIR / "bench_prepare.csv"), help="CSV file the rows are appended to")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    layouts = [tuple(int(x) for x in lay.split("x")) for lay in args.layouts.split(",")]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    common = {"sha": git_sha(), "cores": len(os.sched_getaffinity(0)), "versions": versions(),
              "text": Path(args.text).name, "format": args.format}
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp_name:
        tmp = Path(tmp_name)
        tok = tokenizer_dir(args, tmp)
        baseline = None
        if args.baseline_rev:
            baseline = tmp / "baseline_prepare.py"
            baseline.write_text(subprocess.run(["git", "show", f"{args.baseline_rev}:swcm/data/prepare.py"], cwd=REPO,
                                               capture_output=True, text=True, check=True).stdout)
        for size in sizes:
            data = make_input(Path(args.text), size, args.format, tmp)
            runs = [(f"{t}x{w}", [sys.executable, str(REPO / "launch/prepare_data.py"), "--tokenizer", str(tok),
                                  "--mono", f"bo={data}", "--out", str(tmp / "out"), "--quiet", "--overwrite",
                                  "--tasks", str(t), "--workers", str(w)], w) for t, w in layouts]
            if baseline and args.format == "txt":
                cmd = [sys.executable, "-c", BASELINE, str(baseline), str(tok), str(tmp / "base"), str(data)]
                runs.append((f"baseline {args.baseline_rev}", cmd, 1))
            for name, cmd, workers in runs:
                load = os.getloadavg()[0]
                wall, tree_mb, proc_mb, status = measure(cmd, env)
                row = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **common,
                       "size_mb": size, "layout": name, "wall_s": round(wall, 2),
                       "mb_per_s": round(size / wall, 3), "mb_per_s_per_core": round(size / wall / workers, 3),
                       "peak_pss_tree_mb": round(tree_mb, 1), "peak_rss_one_process_mb": round(proc_mb, 1),
                       "load_avg_1min": round(load, 2), "status": status}
                print(row, flush=True)
                append_csv(args.csv, [row])
                for d in ("out", "base"):
                    subprocess.run(["rm", "-rf", str(tmp / d)], check=False)
            data.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
