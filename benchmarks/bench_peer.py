#!/usr/bin/env python
"""swcm (`launch/finetune.py`) side by side with Hugging Face `Seq2SeqTrainer` + DeepSpeed, on the same export, the
same task JSONL (the 1,291 NTREX zh->bo training pairs of data/demo), the same DeepSpeed config and hyperparameters:

    python benchmarks/bench_peer.py [--pairs 2] [--steps 12] [--timed-from 4] [--micro-batch 8] [--vocab 135140]
                                    [--layers 4] [--hidden 768] [--ranks 2] [--competing-load 0]

Both sides: fp32, ZeRO-2 (ds_configs/zero2.json's zero_optimization block), dropout 0.1, SDPA, AdamW (lr 3e-4,
betas 0.9/0.98, eps 1e-6, weight decay 0.01, none on biases and LayerNorms), one warm-up step then linear decay,
clipping at 1.0, `--micro-batch` examples a rank, and the same batches: Hugging Face is given, step by step and rank
by rank, the examples swcm's first run trained on (its sample log), so the losses can be compared. The model is a
random SWCM (`--layers` encoder layers, a normal decoder layer after every 3, tied head) with `--vocab` embedding
rows. The Hugging Face side (benchmarks/peer_hf_side.py) runs without swcm importable, as a user of the export
would, and carries the patch that lets accelerate start DeepSpeed on CPU ranks.

Runs are interleaved: pair 1 is swcm then HF, pair 2 HF then swcm, and so on. Per run:
- tokens/s in steady state: source tokens + scored target tokens of steps `--timed-from`..`--steps` (all ranks),
  over the wall clock from the end of step `--timed-from - 1` to the end of the last step; each side writes each
  step's end time and tokens as the step finishes;
- peak RSS per rank during training (sampled every 50 ms from /proc, from the end of step 1 to the end of the last
  step) and over the whole process (the kernel's high-water mark VmHWM, sampled until the process exits);
- the loss of the last step (swcm: per-token mean over the step; HF: its logged loss, the mean over ranks);
- the 1-minute load average during the run (mean and max), and `--competing-load` busy processes started for the
  run, the same for both sides.
On a CUDA machine the same command runs both sides on GPUs (peaks are then still host RSS).

Rows go to benchmarks/results/bench_peer.csv; a markdown table (per pair and the mean) is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from random_model import build_random_swcm
from results import REPO as ROOT, RESULTS_DIR, append_csv, git_sha

from swcm.atomic_write import write_atomic

RESULTS = RESULTS_DIR / "bench_peer.csv"
NTREX = ROOT / "data" / "demo" / "parallel" / "ntrex128" / "ntrex128.train"
SAMPLE_EVERY_S = 0.05   # RSS sampling period: a step of the benchmarked sizes lasts seconds
GIB = 2 ** 30
COLUMNS = ("side", "pair", "tokens_per_s", "train_peak_gb_per_rank", "train_peak_gb_max", "process_peak_gb_rank0",
           "process_peak_gb_max", "loss_last", "load_mean", "load_max", "competing_load", "after_last_step_s", "wall_s")


# ---------------------------------------------------------------------------------------------------- assets
def build_assets(work: Path, args) -> tuple[Path, Path, Path, int]:
    """(export dir, task JSONL, DeepSpeed JSON, parameter count) for this size, built once under `work`."""
    tag = f"L{args.layers}_H{args.hidden}_V{args.vocab}"
    model = work / f"model_{tag}"
    try:
        n_params = build_random_swcm(model, layers=args.layers, vocab=args.vocab, hidden=args.hidden,
                                     heads=args.heads, ffn=4 * args.hidden, dropout=args.dropout)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    task = work / "ntrex_zh_bo.train.jsonl"
    if not task.exists():
        zh = Path(f"{NTREX}.zh").read_text(encoding="utf-8").splitlines()
        bo = Path(f"{NTREX}.bo").read_text(encoding="utf-8").splitlines()
        lines = [json.dumps({"source": s, "target": t, "src_lang": "zh", "tgt_lang": "bo"}, ensure_ascii=False)
                 for s, t in zip(zh, bo)]
        write_atomic(task, "".join(line + "\n" for line in lines))
    ds = json.loads((ROOT / "ds_configs" / "zero2.json").read_text())
    ds.update(train_micro_batch_size_per_gpu=args.micro_batch, gradient_accumulation_steps=1,
              train_batch_size=args.micro_batch * args.ranks, gradient_clipping=1.0, bf16={"enabled": False},
              fp16={"enabled": False})
    ds_path = work / f"ds_zero2_mb{args.micro_batch}_r{args.ranks}.json"
    write_atomic(ds_path, json.dumps(ds, indent=2))
    return model, task, ds_path, n_params


def swcm_config(work: Path, model: Path, task: Path, args) -> Path:
    """launch/finetune.py's config: the benchmark's schedule, every micro-batch exactly `--micro-batch` examples
    (a token budget no batch reaches), no dev evaluation, the sample log that gives HF the same batches."""
    cfg = {"model": {"path": str(model), "attn_implementation": "auto"},
           "data": {"train": str(task), "max_len": args.max_len, "max_tokens": 2 * args.max_len * args.micro_batch,
                    "max_samples": args.micro_batch, "seed": 1234},
           "train": {"max_steps": args.steps, "lr": 3e-4, "warmup_ratio": 1 / args.steps, "betas": [0.9, 0.98],
                     "eps": 1e-6, "weight_decay": 0.01, "log_every": args.steps, "save_every": args.steps,
                     "keep_last": 1, "dev_every": 0, "micro_batch_size": args.micro_batch, "seed": 1234,
                     "sample_log": True},
           "eval": {"metric": "loss"}}
    path = work / f"finetune_mb{args.micro_batch}.json"
    write_atomic(path, json.dumps(cfg, indent=2))
    return path


# ---------------------------------------------------------------------------------------------------- watching
def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc/*/stat parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _rank_of(pid: int) -> int | None:
    """The RANK in a process's environment (a training rank), else None."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    except OSError:
        return None
    return int(env[b"RANK"]) if b"RANK" in env and b"LOCAL_RANK" in env else None


def _status_kb(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in kB, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            vals = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f) if k in ("VmRSS", "VmHWM")}
        return vals["VmRSS"], vals["VmHWM"]
    except (OSError, KeyError, ValueError):
        return None


class Watcher(threading.Thread):
    """Samples the RSS of every rank process under `pid` (the launcher) and the load average until stopped. A rank
    is its top process with RANK in the environment (its own children, e.g. the export's verification, are not)."""

    def __init__(self, pid: int, on_rank0=None):
        super().__init__(daemon=True)
        self.pid, self.samples, self.hwm, self.loads = pid, {}, {}, []
        self.rank_pids: dict[int, int] = {}
        self.on_rank0 = on_rank0   # called with rank 0's pid once it is found
        self.done = threading.Event()

    def run(self) -> None:
        last_load = 0.0
        while not self.done.is_set():
            now = time.time()
            for pid in _descendants(self.pid):
                if pid not in self.rank_pids.values():
                    rank = _rank_of(pid)
                    if rank is None or rank in self.rank_pids:
                        continue
                    self.rank_pids[rank] = pid
                    if rank == 0 and self.on_rank0 is not None:
                        self.on_rank0(pid)
            for rank, pid in self.rank_pids.items():
                st = _status_kb(pid)
                if st is not None:
                    self.samples.setdefault(rank, []).append((now, st[0] * 1024))
                    self.hwm[rank] = max(self.hwm.get(rank, 0), st[1] * 1024)
            if now - last_load >= 1.0:
                self.loads.append(os.getloadavg()[0])
                last_load = now
            time.sleep(SAMPLE_EVERY_S)

    def peaks_between(self, start: float, end: float) -> list[float]:
        """Per rank (in rank order), the largest sampled RSS in [start, end], in GiB."""
        return [max((rss for t, rss in self.samples[r] if start <= t <= end), default=float("nan")) / GIB
                for r in sorted(self.samples)]


def _burners(n: int) -> list[subprocess.Popen]:
    """`n` processes that keep a core busy (the competing load), at the ranks' priority; each ends by itself when the
    benchmark's process is gone (even if it is killed)."""
    spin = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------- one run
def _env(work: Path) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(work / "hf_modules"))
    # DeepSpeed's JIT-built CPU op in this venv's own cache: in the shared ~/.cache/torch_extensions, venvs at other
    # paths rebuild it over each other, and a run waits minutes for the build lock before its first step.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    env.pop("TRITON_INTERPRET", None)   # the Triton interpreter (set by the test suite) is for correctness, never speed
    if not _cuda():
        # One thread a rank on a CPU host: the ranks are the parallelism (CPU-NOTES); the same for both sides.
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    return env


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_side(side: str, pair: int, run_dir: Path, cmd_tail: list[str], args, work: Path, port: int) -> dict:
    """Launch one side under the DeepSpeed launcher, watch it, and return its measured row."""
    shutil.rmtree(run_dir, ignore_errors=True)
    launcher = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", str(args.ranks),
                "--master_port", str(port)]
    burners = _burners(args.competing_load)
    started = time.time()
    log = open(work / f"{run_dir.name}.log", "w")
    profilers = []

    def profile(pid: int) -> None:   # py-spy on rank 0, every thread, idle ones too (waits are what we look for)
        profilers.append(subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--format", "raw", "--idle",
             "--rate", "50", "--nonblocking", "-o", str(work / f"{run_dir.name}.pyspy")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        proc = subprocess.Popen(launcher + cmd_tail, env=_env(work), stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT)
        watcher = Watcher(proc.pid, on_rank0=profile if args.profile else None)
        watcher.start()
        code = proc.wait()
        watcher.done.set()
        watcher.join()
        for prof in profilers:   # py-spy ends with its target and writes its file
            prof.wait(timeout=60)
    finally:
        for b in burners:
            b.kill()
            b.wait()
        log.close()
        from swcm.training.shm import release_shm_buffers

        for r in range(args.ranks):   # DeepSpeed's CPU all-reduce buffers, which the HF side leaves behind
            release_shm_buffers("127.0.0.1", str(port), r)
    ended = time.time()
    if code != 0:
        tail = (work / f"{run_dir.name}.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"error: the {side} run of pair {pair} failed (exit {code}); its log ends:\n{tail}")
    rows = _step_rows(side, run_dir)
    if len(rows) != args.steps:
        raise SystemExit(f"error: the {side} run of pair {pair} logged {len(rows)} steps, expected {args.steps}")
    t0 = rows[args.timed_from - 2]["time"]
    t_end = rows[-1]["time"]
    tokens = sum(r["tokens"] for r in rows[args.timed_from - 1:])
    train = watcher.peaks_between(rows[0]["time"], t_end)
    whole = [watcher.hwm[r] / GIB for r in sorted(watcher.hwm)]
    return {"side": side, "pair": pair, "tokens_per_s": tokens / (t_end - t0),
            "train_peak_gb_per_rank": "/".join(f"{x:.3f}" for x in train), "train_peak_gb_max": max(train),
            "process_peak_gb_rank0": whole[0], "process_peak_gb_max": max(whole), "loss_last": rows[-1]["loss"],
            "load_mean": statistics.fmean(watcher.loads) if watcher.loads else os.getloadavg()[0],
            "load_max": max(watcher.loads, default=os.getloadavg()[0]), "competing_load": args.competing_load,
            "after_last_step_s": ended - t_end, "wall_s": ended - started}


def _step_rows(side: str, run_dir: Path) -> list[dict]:
    """Per step: end time, tokens (all ranks) and loss, from the side's own step log."""
    if side == "swcm":
        return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    per_rank = [[json.loads(x) for x in p.read_text().splitlines()] for p in sorted(run_dir.glob("steps_rank*.jsonl"))]
    return [{"step": r0["step"], "time": r0["time"], "loss": r0.get("loss", float("nan")),
             "tokens": sum(rows[i]["tokens"] for rows in per_rank)} for i, r0 in enumerate(per_rank[0])]


# ---------------------------------------------------------------------------------------------------- report
def markdown(rows: list[dict], command: str, header: str) -> str:
    """Per pair: tokens/s of each side and swcm / HF; training peak (max over ranks) and ratio; rank 0's
    whole-process peak over its training peak; losses; load. Then the mean over the pairs."""
    by = {(r["pair"], r["side"]): r for r in rows}
    pairs = sorted({r["pair"] for r in rows})
    lines = [header, "", f"`{command}`", "",
             "| pair | swcm tok/s | HF tok/s | swcm/HF | swcm train peak GiB | HF train peak GiB | swcm/HF peak "
             "| swcm rank-0 process/train peak | swcm loss | HF loss | load swcm / HF |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    ratios = []
    for p in pairs:
        s, h = by[(p, "swcm")], by[(p, "hf")]
        r = (s["tokens_per_s"] / h["tokens_per_s"], s["train_peak_gb_max"] / h["train_peak_gb_max"],
             s["process_peak_gb_rank0"] / float(s["train_peak_gb_per_rank"].split("/")[0]))
        ratios.append(r)
        lines.append(f"| {p} | {s['tokens_per_s']:.1f} | {h['tokens_per_s']:.1f} | {r[0]:.2f} | "
                     f"{s['train_peak_gb_max']:.2f} | {h['train_peak_gb_max']:.2f} | {r[1]:.2f} | {r[2]:.2f} | "
                     f"{s['loss_last']:.4f} | {h['loss_last']:.4f} | {s['load_mean']:.1f} / {h['load_mean']:.1f} |")
    mean = [statistics.fmean(x) for x in zip(*ratios)]
    lines.append(f"| mean | | | {mean[0]:.2f} | | | {mean[1]:.2f} | {mean[2]:.2f} | | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=2, help="interleaved (swcm, HF) pairs")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--timed-from", type=int, default=4, help="first timed step (the ones before warm up)")
    p.add_argument("--micro-batch", type=int, default=8, help="examples per rank per step")
    p.add_argument("--vocab", type=int, default=135_140, help="embedding rows (CINO: 135,135 + 5 tags; XLM-R 250,002)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--max-len", type=int, default=128, help="tokens per side, special tokens included")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--competing-load", type=int, default=0, metavar="N",
                   help="busy processes started beside each run (the same for both sides)")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_peer"))
    p.add_argument("--results", default=str(RESULTS), help="CSV the rows are appended to")
    p.add_argument("--port", type=int, default=29611, help="first master port (each run takes the next one)")
    p.add_argument("--profile", action="store_true",
                   help="record rank 0 of each run with py-spy (WORK/<side>_pair<N>.pyspy) and print where the "
                        "training loop's time goes on each side")
    args = p.parse_args(argv)
    for name in ("pairs", "micro_batch", "ranks", "layers", "hidden", "heads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if not 2 <= args.timed_from <= args.steps:
        p.error(f"--timed-from {args.timed_from}: must lie in 2..--steps ({args.steps})")
    if args.hidden % args.heads:
        p.error(f"--hidden {args.hidden}: must be a multiple of --heads ({args.heads})")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, task, ds_path, n_params = build_assets(work, args)
    config = swcm_config(work, model, task, args)

    import deepspeed
    import torch
    import transformers

    device = torch.cuda.get_device_name() if _cuda() else f"cpu ({os.cpu_count()} cores)"
    sha = git_sha()
    facts = {"git": sha, "device": device, "torch": torch.__version__, "transformers": transformers.__version__,
             "deepspeed": deepspeed.__version__, "params_m": round(n_params / 1e6, 1), "vocab": args.vocab,
             "layers": args.layers, "hidden": args.hidden, "ranks": args.ranks, "micro_batch": args.micro_batch,
             "steps": args.steps, "timed_from": args.timed_from}
    plan = None
    results, port = [], args.port
    for pair in range(1, args.pairs + 1):
        order = ("swcm", "hf") if pair % 2 else ("hf", "swcm")
        for side in order:
            run_dir = work / f"{side}_pair{pair}"
            if side == "swcm":
                tail = [str(ROOT / "launch" / "finetune.py"), "--config", str(config), "--deepspeed_config",
                        str(ds_path), "--out", str(run_dir)]
            else:
                tail = [str(ROOT / "benchmarks" / "peer_hf_side.py"), "--model", str(model), "--train", str(task),
                        "--ds-config", str(ds_path), "--out", str(run_dir), "--steps", str(args.steps),
                        "--micro-batch", str(args.micro_batch), "--max-len", str(args.max_len), "--plan", str(plan)]
            print(f"pair {pair}: {side} ...", flush=True)
            result = run_side(side, pair, run_dir, tail, args, work, port)
            results.append(result)
            # each run's row as soon as it is measured: an interrupted benchmark keeps what it finished
            append_csv(args.results, [{"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"), **facts, **{k: round(v, 4) if isinstance(v, float) else v
                                                 for k, v in ((k, result[k]) for k in COLUMNS)}}])
            port += 1
            if side == "swcm" and plan is None:
                plan = work / "plan"
                shutil.rmtree(plan, ignore_errors=True)
                shutil.copytree(run_dir / "samples", plan)
            if side == "swcm":   # GBs a run at full size, measured already
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
                shutil.rmtree(run_dir / "hf", ignore_errors=True)

    command = "python benchmarks/bench_peer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"{n_params / 1e6:.1f}M parameters (V {args.vocab:,}, {args.layers} layers, hidden {args.hidden}), "
              f"{args.ranks} ranks x micro-batch {args.micro_batch}, {args.steps} steps (timed {args.timed_from}-"
              f"{args.steps}), competing load {args.competing_load}; {device}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}, deepspeed {deepspeed.__version__}, git {sha}")
    print()
    print(markdown(results, command, header))
    if args.profile:
        from profile_categories import table

        for pair in range(1, args.pairs + 1):
            print(f"\npair {pair}, rank 0, py-spy samples of the main thread:\n")
            print(table({side: work / f"{side}_pair{pair}.pyspy" for side in ("swcm", "hf")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
