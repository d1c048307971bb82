"""Benchmark the fused LM head + cross-entropy (swcm_kernels.lm_head_ce) against naive
F.linear + F.cross_entropy: median time, TFLOP/s and peak memory for forward, backward and full
(forward + backward) steps.

Every (variant, mode) runs in its own subprocess so one variant's allocations cannot inflate
another's peak. Peak memory is the peak above the level when the timed region starts:
torch.cuda.max_memory_allocated on a GPU; on a CPU the peak resident set size (VmHWM, reset through
/proc/self/clear_refs, or sampled from /proc/self/statm every millisecond where that is not allowed).
Rows are appended to benchmarks/results/bench_lm_head_ce.csv with device, versions, git sha and date.

Variants: "naive" (kernels.lm_head_ce.lm_head_ce_reference), "chunked" (impl="torch"), and on CUDA
"triton" (impl="triton"). The fused variants compute every gradient in their forward, so their
"forward" includes the backward matmuls and their "backward" only scales stored gradients; compare
"full". FLOPs: forward 2*N*H*V, backward 2x forward (see flop_count).

    python benchmarks/bench_lm_head_ce.py                         # issue 5 acceptance shape, fp32
    python benchmarks/bench_lm_head_ce.py --n 512 --vocab 32003 --modes full --repeats 5
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from results import REPO, RESULTS_DIR, append_csv, git_sha  # noqa: F401  (re-exported to bench_attention)

MODES = ("forward", "backward", "full")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Large freed blocks go straight back to the OS, so RSS follows live allocations (CPU-NOTES.md).
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def flop_count(mode, n, h, v):
    """Model FLOPs of the LM head: forward = logits matmul (2*N*H*V); backward = grad_hidden and
    grad_weight matmuls (2 * forward); the softmax/CE elementwise work is not counted."""
    fwd = 2 * n * h * v
    return {"forward": fwd, "backward": 2 * fwd, "full": 3 * fwd}[mode]


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def versions():
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return torch.__version__, triton_version


def _proc_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Context manager: .peak_bytes = peak memory above the level at entry (see module docstring)."""

    def __init__(self, device):
        self.device = device
        self.peak_bytes = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = _proc_kb("VmRSS") * 1024
        self._sampler = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        except OSError:
            self._sampled_peak = self._base
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self._sampled_peak = max(self._sampled_peak, int(f.read().split()[1]) * page)
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._sampler is None:
            self.peak_bytes = _proc_kb("VmHWM") * 1024 - self._base
        else:
            self._stop.set()
            self._sampler.join()
            self.peak_bytes = self._sampled_peak - self._base
        return False


def measure(prepare, run, device, repeats, warmup):
    """Median seconds of run(prepare()) over repeats after warmup runs, and the max peak memory.
    prepare() is untimed (e.g. the forward before a timed backward)."""
    for _ in range(warmup):
        run(prepare())
    times, peaks = [], []
    for _ in range(repeats):
        state = prepare()
        with PeakMemory(device) as mem:
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run(state)
                end.record()
                torch.cuda.synchronize(device)
                elapsed = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                run(state)
                elapsed = time.perf_counter() - t0
        del state
        times.append(elapsed)
        peaks.append(mem.peak_bytes)
    return statistics.median(times), max(peaks)




def run_workers(script, variants, modes, worker_args):
    """Run `script --worker VARIANT:MODE worker_args` per pair; returns their JSON results."""
    results = []
    for variant in variants:
        for mode in modes:
            cmd = [sys.executable, str(script), "--worker", f"{variant}:{mode}", *worker_args]
            proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **WORKER_ENV}, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"worker {variant}:{mode} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
            r = results[-1]
            print(f"  {variant:8s} {mode:8s} {r['median_ms']:10.1f} ms  {r['peak_mem_mb']:9.1f} MB", flush=True)
    return results


def _worker(args):
    """Build the inputs once, time one (variant, mode), print one RESULT line."""
    from swcm_kernels.lm_head_ce import _default_chunk_size, fused_linear_cross_entropy, lm_head_ce_reference

    variant, mode = args.worker.split(":")
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.n, args.hidden, generator=gen).to(device, dtype).requires_grad_()
    # 0.02: the usual init std of an embedding, so the logits are of order 1.
    weight = (torch.randn(args.vocab, args.hidden, generator=gen) * 0.02).to(device, dtype).requires_grad_()
    labels = torch.randint(0, args.vocab, (args.n,), generator=gen).to(device)
    labels[::10] = -100  # some padding, as in real batches

    if variant == "naive":
        def forward():
            return lm_head_ce_reference(hidden, weight, labels)
    else:
        impl = {"chunked": "torch", "triton": "triton"}[variant]

        def forward():
            return fused_linear_cross_entropy(hidden, weight, labels, chunk_size=args.chunk_size, impl=impl)

    def clear_grads():
        hidden.grad = weight.grad = None

    if mode == "forward":
        def prepare():
            clear_grads()

        def run(_):
            return forward()
    elif mode == "backward":
        def prepare():
            clear_grads()
            return forward()

        def run(loss):
            loss.backward()
    else:
        def prepare():
            clear_grads()

        def run(_):
            forward().backward()

    seconds, peak = measure(prepare, run, device, args.repeats, args.warmup)
    torch_version, triton_version = versions()
    print("RESULT " + json.dumps(dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), git_sha=git_sha(),
        device=device_name(device), torch=torch_version, triton=triton_version, benchmark="lm_head_ce",
        variant=variant, mode=mode, dtype=args.dtype, shape=f"N={args.n} H={args.hidden} V={args.vocab}",
        chunk_size="" if variant == "naive" else args.chunk_size or _default_chunk_size(
            args.n, args.hidden, args.vocab),
        repeats=args.repeats, median_ms=round(seconds * 1e3, 3),
        tflops=round(flop_count(mode, args.n, args.hidden, args.vocab) / seconds / 1e12, 4),
        peak_mem_mb=round(peak / 2**20, 1))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096, help="tokens (rows of hidden)")
    parser.add_argument("--hidden", type=int, default=768, help="hidden size H")
    parser.add_argument("--vocab", type=int, default=250_002, help="vocabulary size V (XLM-R: 250,002)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--variants", nargs="+", choices=("naive", "chunked", "triton"), default=None,
                        help="default: naive chunked (+ triton on CUDA)")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: the kernel's rule)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--csv", type=Path, default=RESULTS_DIR / "bench_lm_head_ce.csv")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        sys.path.insert(0, str(REPO))
        return _worker(args)

    variants = args.variants or (["naive", "chunked"] + (["triton"] if args.device.startswith("cuda") else []))
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in
                 (("n", args.n), ("hidden", args.hidden), ("vocab", args.vocab), ("dtype", args.dtype),
                  ("repeats", args.repeats), ("warmup", args.warmup), ("device", args.device),
                  ("chunk_size", args.chunk_size), ("threads", args.threads)) if v is not None]
    print(f"lm_head_ce N={args.n} H={args.hidden} V={args.vocab} {args.dtype} on {args.device}", flush=True)
    rows = run_workers(Path(__file__).resolve(), variants, args.modes, forwarded)
    append_csv(args.csv, rows)

    print(f"\n{'variant':8s} {'mode':8s} {'median ms':>11s} {'TFLOP/s':>8s} {'peak MB':>9s}  time/naive  mem/naive")
    naive = {r["mode"]: r for r in rows if r["variant"] == "naive"}
    for r in rows:
        base = naive.get(r["mode"])
        ratios = (f"{r['median_ms'] / base['median_ms']:10.3f} {r['peak_mem_mb'] / base['peak_mem_mb']:10.3f}"
                  if base and r is not base and base["peak_mem_mb"] > 0 else "")
        print(f"{r['variant']:8s} {r['mode']:8s} {r['median_ms']:11.1f} {r['tflops']:8.3f} "
              f"{r['peak_mem_mb']:9.1f}  {ratios}")
    print(f"appended {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    main()
