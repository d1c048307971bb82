#!/usr/bin/env python
"""`make gpu-check`: on one CUDA GPU, prove the Triton kernels correct and measure them, in four parts.

  a. tests    `pytest -m gpu` on the kernel test files with compiled kernels (TRITON_INTERPRET unset or 0: with CUDA
              tests/conftest.py leaves it unset); every selected test must pass, none may skip.
  b. attention flash_attention forward + backward against SDPA on its flash backend (`sdpa_kernel(FLASH_ATTENTION)`),
              bf16, D 64, H 12, B*T = 16,384 tokens, T in {256, 512, 1024, 2048}, bidirectional and causal: time,
              TFLOP/s (bench_attention.flop_count; causal halves it) and triton/sdpa ratio. Correct when the output
              and dq, dk, dv are within 2x SDPA-flash's own error against the fp32 reference, plus the bf16 floor
              (tests/kernel_utils.py).
  c. LM head  swcm_kernels.lm_head_ce.fused_linear_cross_entropy against the naive F.linear + F.cross_entropy and, when
              liger-kernel imports, LigerFusedLinearCrossEntropyLoss: N 8,192, H 768, V in {135,140, 250,002}, bf16,
              forward + backward time and peak memory. Correct when the fused loss and gradients are within the CE
              table of tests/kernel_utils.py against an fp32 naive computation.
  d. training 30 steps of the 388M CINO-shape model (bench_train.build_assets, 12 layers, V 135,140), one GPU,
              bf16, ZeRO-2, `model.attn_implementation` auto vs sdpa, through `deepspeed launch/pretrain.py`: the two
              loss curves agree within a bf16 tolerance; tokens/s, MFU and peak memory of each. Dropout is off in
              this model so the curves differ only by the attention arithmetic (the kernel tests check dropout).

Without CUDA the same script runs as a dry run at tiny shapes under the Triton interpreter (d: a 1-layer model,
2 steps, fp32, on one CPU rank), so CI tests the script itself, and says no GPU was found; its numbers are not
GPU figures. Prints one table per part and a summary, appends rows to <csv-dir>/gpu_{tests,attention,lm_head_ce,
train}.csv (default benchmarks/results on a GPU, runs/gpu_check_dry_run otherwise), ends with a line
`GPU-CHECK-RESULT {json}` and exits 1 if any part failed.

    python benchmarks/gpu_check.py [--parts abcd] [--csv-dir DIR] [--work DIR] [--train-impls auto,sdpa]
"""

import argparse
import datetime
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from results import REPO, RESULTS_DIR, append_csv, git_sha

HAS_CUDA = torch.cuda.is_available()
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench_attention import flop_count as attention_flops  # noqa: E402
from bench_lm_head_ce import device_name, measure, versions  # noqa: E402
from kernel_utils import assert_close_table, assert_within_2x_baseline, max_abs_err  # noqa: E402

TEST_FILES = ("tests/test_kernel_attention.py", "tests/test_kernel_lm_head_ce.py")
DEFAULT_TRAIN_IMPLS = ("auto", "sdpa")
# Relative per-step loss difference allowed between two attention implementations. bf16 rounds every matmul
# output to 8 mantissa bits (2**-9 = 2e-3 relative); the two kernels round differently in every layer and the
# difference compounds over 30 updates, so allow ten times one rounding. Not yet calibrated on a GPU: compare
# with the first measured curves. fp32 (the CPU dry run): the implementations differ by summation order only.
LOSS_RTOL = {"bf16": 2e-2, "fp32": 1e-4}


class Shapes:
    """Everything that differs between the GPU run and the CPU dry run."""

    def __init__(self, gpu):
        self.attn_lengths = (256, 512, 1024, 2048) if gpu else (17, 33)
        self.attn_tokens = 16_384 if gpu else 33  # B * T: the batch shrinks as T grows
        self.attn_heads, self.attn_head_dim = (12, 64) if gpu else (2, 64)
        self.ce_n, self.ce_hidden = (8_192, 768) if gpu else (64, 32)
        self.ce_vocabs = (135_140, 250_002) if gpu else (1_031, 2_053)
        self.repeats, self.warmup = (20, 5) if gpu else (1, 0)  # the interpreter has nothing to warm up
        # 12 layers at CINO-base-v2 width with its vocabulary (135,135 + 5 language tags) is 388M parameters.
        self.train_layers, self.train_vocab = (12, 135_140) if gpu else (1, 8_192)
        self.train_steps = 30 if gpu else 2  # tokens/s skips the first step
        self.train_max_tokens = 16_384 if gpu else 1_024
        self.train_precision = "bf16" if gpu else "fp32"


def _row_base(device, dry_run):
    torch_version, triton_version = versions()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_sha": git_sha(), "device": device_name(device), "torch": torch_version, "triton": triton_version,
            "run": "cpu-dry-run" if dry_run else "gpu"}


def _sig(x):
    """x to 4 significant digits (CPU dry-run rates are far below 1e-4)."""
    return float(f"{x:.4g}")


def _print_table(rows, columns):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))


# ---------------------------------------------------------------------------------------------------- a. tests

def part_tests(ctx):
    """pytest -m gpu on TEST_FILES; ok when it exits 0 with no failure, and on a GPU with no skip and >= 1 pass."""
    env = dict(os.environ, TRITON_INTERPRET="1" if ctx.dry_run else "0")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *TEST_FILES]
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=ctx.test_timeout)
    seconds = time.perf_counter() - start
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    counts = {k: 0 for k in ("passed", "failed", "skipped", "deselected", "error")}
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary):
        counts[what.rstrip("s") if what.startswith("error") else what] += int(n)
    ran_clean = res.returncode == 0 and counts["failed"] == counts["error"] == 0
    ok = ran_clean and (ctx.dry_run or (counts["passed"] > 0 and counts["skipped"] == 0))
    if not ok:
        print(res.stdout[-6000:], res.stderr[-3000:], sep="\n")
    row = {**ctx.row_base, **counts, "returncode": res.returncode, "seconds": round(seconds, 1),
           "status": "ok" if ok else "FAIL"}
    _print_table([row], ["passed", "failed", "skipped", "deselected", "error", "seconds", "status"])
    ctx.write("gpu_tests.csv", [row])
    detail = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped ({summary})"
    return ("ok" if ok else "FAIL"), detail


# ------------------------------------------------------------------------------------------------ b. attention

def _fwd_bwd(fn, q, k, v, dout):
    """fn(q, k, v) and its gradients for upstream gradient dout, on fresh leaves."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), dout.to(out.dtype)))


def _sdpa_flash(causal):
    def run(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run


def _time_fwd_bwd(ctx, fn, q, k, v, dout):
    """Median seconds of fn forward + backward (bench_lm_head_ce.measure)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

    def run(_):
        fn(*leaves).backward(dout)

    def prepare():
        for t in leaves:
            t.grad = None

    seconds, _ = measure(prepare, run, ctx.device, ctx.shapes.repeats, ctx.shapes.warmup)
    return seconds


def part_attention(ctx):
    """Per (T, causal): correctness by the 2x rule, then time and TFLOP/s of both implementations."""
    from swcm_kernels.attention import attention_reference, flash_attention

    s = ctx.shapes
    dtype = torch.bfloat16
    H, D = s.attn_heads, s.attn_head_dim
    rows, failures = [], []
    for T in s.attn_lengths:
        for causal in (False, True):
            B = max(1, s.attn_tokens // T)
            gen = torch.Generator().manual_seed(T + causal)
            q, k, v, dout = (torch.randn(B, H, T, D, generator=gen).to(ctx.device, dtype) for _ in range(4))
            kernel = lambda q, k, v, c=causal: flash_attention(q, k, v, causal=c)  # noqa: E731
            truth = _fwd_bwd(lambda q, k, v: attention_reference(q, k, v, causal=causal), q.float(), k.float(),
                             v.float(), dout.float())
            base = _fwd_bwd(_sdpa_flash(causal), q, k, v, dout)
            got = _fwd_bwd(kernel, q, k, v, dout)
            errors, status = {}, "ok"
            for name, g, b, t in zip(("out", "dq", "dk", "dv"), got, base, truth):
                errors[f"err_{name}"] = f"{max_abs_err(g, t):.2e}"
                try:
                    assert_within_2x_baseline(name, g, b, t, dtype)
                except AssertionError as e:
                    status = "FAIL"
                    failures.append(f"T={T} causal={causal}: {e}")
            del truth, base, got
            t_sdpa = _time_fwd_bwd(ctx, _sdpa_flash(causal), q, k, v, dout)
            t_triton = _time_fwd_bwd(ctx, kernel, q, k, v, dout)
            flops = attention_flops("full", B, H, T, T, D, causal)
            rows.append({**ctx.row_base, "B": B, "H": H, "T": T, "D": D, "causal": causal, "dtype": "bf16",
                         "sdpa_ms": _sig(t_sdpa * 1e3), "triton_ms": _sig(t_triton * 1e3),
                         "sdpa_tflops": _sig(flops / t_sdpa / 1e12), "triton_tflops": _sig(flops / t_triton / 1e12),
                         "tflops_ratio": _sig(t_sdpa / t_triton), **errors, "status": status})
    _print_table(rows, ["B", "T", "causal", "sdpa_ms", "triton_ms", "sdpa_tflops", "triton_tflops",
                        "tflops_ratio", "err_out", "err_dq", "err_dk", "err_dv", "status"])
    ctx.write("gpu_attention.csv", rows)
    if failures:
        return "FAIL", "; ".join(failures)
    ratios = [r["tflops_ratio"] for r in rows]
    return "ok", f"{len(rows)} shapes within 2x SDPA-flash's error; TFLOP/s triton/sdpa {min(ratios)}-{max(ratios)}"


# -------------------------------------------------------------------------------------------------- c. LM head

def _liger_loss():
    """LigerFusedLinearCrossEntropyLoss(weight, hidden, labels) when liger-kernel imports, else None."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss()


def part_lm_head(ctx):
    """Per vocabulary size: the fused head's loss and gradients against fp32, then time and peak memory of the
    naive, fused and (if installed) Liger heads, forward + backward."""
    from swcm_kernels.lm_head_ce import fused_linear_cross_entropy, lm_head_ce_reference

    s = ctx.shapes
    dtype = torch.bfloat16
    liger = _liger_loss() if ctx.device.type == "cuda" else None  # Liger's kernels are CUDA-only
    variants = {"naive": lm_head_ce_reference, "fused": fused_linear_cross_entropy}
    if liger is not None:
        variants["liger"] = lambda h, w, y: liger(w, h, y)
    rows, failures = [], []
    for V in s.ce_vocabs:
        gen = torch.Generator().manual_seed(V)
        hidden = torch.randn(s.ce_n, s.ce_hidden, generator=gen).to(ctx.device, dtype)
        # 0.02: an embedding's usual init std, so the logits are of order 1.
        weight = (torch.randn(V, s.ce_hidden, generator=gen) * 0.02).to(ctx.device, dtype)
        labels = torch.randint(0, V, (s.ce_n,), generator=gen).to(ctx.device)
        labels[::10] = -100  # some padding, as in real batches

        def loss_and_grads(fn, h, w):
            h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
            loss = fn(h, w, labels)
            return (loss, *torch.autograd.grad(loss, (h, w)))

        truth = loss_and_grads(lm_head_ce_reference, hidden.float(), weight.float())
        got = loss_and_grads(fused_linear_cross_entropy, hidden, weight)
        errors, status = {}, "ok"
        for name, g, t in zip(("loss", "grad_hidden", "grad_weight"), got, truth):
            errors[f"err_{name}"] = f"{max_abs_err(g, t):.2e}"
            try:
                assert_close_table(name, g.float(), t, dtype)
            except AssertionError as e:
                status = "FAIL"
                failures.append(f"V={V}: {e}")
        del truth, got
        timings = {}
        for name, fn in variants.items():
            h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()

            def prepare():
                h.grad = w.grad = None

            def run(_):
                fn(h, w, labels).backward()

            timings[name] = measure(prepare, run, ctx.device, s.repeats, s.warmup)
            h = w = None   # free this variant's copies before the next one allocates its own
        naive_s, naive_peak = timings["naive"]
        for name, (seconds, peak) in timings.items():
            rows.append({**ctx.row_base, "N": s.ce_n, "H": s.ce_hidden, "V": V, "dtype": "bf16", "variant": name,
                         "ms": _sig(seconds * 1e3), "peak_mb": round(peak / 2**20, 1),
                         "time_vs_naive": _sig(seconds / naive_s),
                         "mem_vs_naive": _sig(peak / naive_peak) if naive_peak > 0 else float("nan"),
                         # only the fused head is checked (against fp32): the naive head is the reference's recipe
                         **{k: e if name == "fused" else "" for k, e in errors.items()},
                         "status": status if name == "fused" else ""})
    _print_table(rows, ["V", "variant", "ms", "peak_mb", "time_vs_naive", "mem_vs_naive", "err_loss",
                        "err_grad_hidden", "err_grad_weight", "status"])
    ctx.write("gpu_lm_head_ce.csv", rows)
    if failures:
        return "FAIL", "; ".join(failures)
    fused = [r for r in rows if r["variant"] == "fused"]
    liger_note = "" if liger is not None else "; liger-kernel not installed (or no CUDA): not compared"
    return "ok", ("fused within the bf16 CE table; against naive "
                  + ", ".join(f"V={r['V']}: time {r['time_vs_naive']}x, memory {r['mem_vs_naive']}x" for r in fused)
                  + liger_note)


# ------------------------------------------------------------------------------------------------- d. training

def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_training(work, shapes):
    """bench_train's CINO-shape model and demo shards in `work`, with dropout off; returns (run config, DeepSpeed
    config) paths for `shapes`' batch size and precision (ZeRO-2)."""
    from bench_train import build_assets

    work.mkdir(parents=True, exist_ok=True)
    config = json.loads(build_assets(work, shapes.train_layers, shapes.train_vocab).read_text())
    model_config = work / "model" / "config.json"
    cfg = json.loads(model_config.read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model_config.write_text(json.dumps(cfg, indent=2))
    config["data"]["max_tokens"] = shapes.train_max_tokens
    run_config = work / "gpu_check_run.json"
    run_config.write_text(json.dumps(config, indent=2))
    ds = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    ds["bf16"] = {"enabled": shapes.train_precision == "bf16"}
    ds_config = work / "gpu_check_zero2.json"
    ds_config.write_text(json.dumps(ds, indent=2))
    return run_config, ds_config


def run_training(run_config, ds_config, out, impl, steps, timeout):
    """One `deepspeed --num_gpus 1 launch/pretrain.py` run with model.attn_implementation=impl; returns its
    metrics.jsonl rows (one per step) and perf/rank0.json. Raises RuntimeError when the run fails."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, DS_ACCELERATOR="cuda" if HAS_CUDA else "cpu", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    env.pop("TRITON_INTERPRET", None)  # training runs compiled kernels or none, never the interpreter
    if not HAS_CUDA:
        env["OMP_NUM_THREADS"] = "1"
    cmd = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "1", "--master_port", str(_free_port()),
           str(REPO / "launch" / "pretrain.py"), "--config", str(run_config), "--deepspeed_config", str(ds_config),
           "--out", str(out), "--max-steps", str(steps), "--set", f"model.attn_implementation={impl}"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"attn {impl}: training exited {res.returncode}:\n{res.stdout[-2000:]}\n"
                           f"{res.stderr[-4000:]}")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the final save is GBs and not needed here
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows, json.loads((out / "perf" / "rank0.json").read_text())


def _n_params(model_dir):
    from swcm.modeling_swcm import SWCMConfig, SWCMForConditionalGeneration

    with torch.device("meta"):
        return sum(p.numel() for p in SWCMForConditionalGeneration(
            SWCMConfig.from_pretrained(str(model_dir))).parameters())


def compare_training(runs, steps, precision, n_params, peak_flops):
    """Checks two runs' metrics (dict impl -> (rows, perf)); returns (summary rows, failure messages).

    Both must log `steps` finite losses on identical batches (same tokens per step) and agree per step within
    LOSS_RTOL[precision]. tokens/s = tokens / step_time_s summed over the steps after the first (which pays for
    compilation and allocation). MFU ~ 3 * parameters * tokens/s / peak FLOP/s: each token passes through the
    encoder or the decoder + head (the tied embedding counted once, as the head), with source and target of
    about equal length; attention-score FLOPs are not counted."""
    failures, out = [], []
    (impl_a, (rows_a, _)), (impl_b, (rows_b, _)) = runs.items()
    for impl, (rows, _) in runs.items():
        if [r["step"] for r in rows] != list(range(1, steps + 1)) or not all(math.isfinite(r["loss"]) for r in rows):
            failures.append(f"{impl}: expected {steps} finite losses, got {[(r['step'], r['loss']) for r in rows]}")
    if failures:
        return [], failures
    if [r["tokens"] for r in rows_a] != [r["tokens"] for r in rows_b]:
        failures.append(f"{impl_a} and {impl_b} trained on different batches (tokens per step differ)")
    rel = [abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(rows_a, rows_b)]
    worst = max(range(steps), key=lambda i: rel[i])
    if rel[worst] > LOSS_RTOL[precision]:
        failures.append(f"loss curves differ: step {worst + 1} {impl_a} {rows_a[worst]['loss']:.5f} vs {impl_b} "
                        f"{rows_b[worst]['loss']:.5f} (relative {rel[worst]:.2e} > {LOSS_RTOL[precision]:.0e})")
    for impl, (rows, perf) in runs.items():
        timed = rows[1:]
        tokens_per_s = sum(r["tokens"] for r in timed) / sum(r["step_time_s"] for r in timed)
        out.append({"attn": impl, "steps": steps, "precision": precision, "params_m": round(n_params / 1e6, 1),
                    "loss_first": round(rows[0]["loss"], 5), "loss_last": round(rows[-1]["loss"], 5),
                    "max_rel_loss_diff": f"{rel[worst]:.2e}", "tokens_per_s": round(tokens_per_s, 1),
                    "mfu": _sig(3 * n_params * tokens_per_s / peak_flops),
                    "peak_memory_gb": round(perf["peak_memory_gb"], 3),
                    "status": "FAIL" if failures else "ok"})
    return out, failures


def part_training(ctx):
    """Train twice (ctx.train_impls), compare the loss curves, report speed and memory."""
    from swcm.training.metrics import device_peak_flops

    s = ctx.shapes
    run_config, ds_config = prepare_training(ctx.work, s)
    # One GPU trains (and is timed) one run at a time; the dry run's two 1-thread CPU ranks run side by side.
    with ThreadPoolExecutor(max_workers=1 if HAS_CUDA else 2) as pool:
        futures = {impl: pool.submit(run_training, run_config, ds_config, ctx.work / f"run_{impl}", impl,
                                     s.train_steps, ctx.train_timeout) for impl in ctx.train_impls}
        runs = {impl: f.result() for impl, f in futures.items()}
    rows, failures = compare_training(runs, s.train_steps, s.train_precision, _n_params(ctx.work / "model"),
                                      device_peak_flops(ctx.device))
    rows = [{**ctx.row_base, **r} for r in rows]
    if rows:
        _print_table(rows, ["attn", "steps", "precision", "params_m", "loss_first", "loss_last", "max_rel_loss_diff",
                            "tokens_per_s", "mfu", "peak_memory_gb", "status"])
        ctx.write("gpu_train.csv", rows)
    if failures:
        return "FAIL", "; ".join(failures)
    a, b = rows
    return "ok", (f"{a['attn']} vs {b['attn']}: losses within {LOSS_RTOL[s.train_precision]:.0e} relative "
                  f"(max {a['max_rel_loss_diff']}); tokens/s {a['tokens_per_s']} vs {b['tokens_per_s']}; "
                  f"peak GB {a['peak_memory_gb']} vs {b['peak_memory_gb']}")


# ---------------------------------------------------------------------------------------------------------- main

PARTS = {"a": ("tests", part_tests), "b": ("attention", part_attention), "c": ("lm head + CE", part_lm_head),
         "d": ("training", part_training)}


class Context:
    def __init__(self, args):
        self.dry_run = not HAS_CUDA
        self.device = torch.device("cuda" if HAS_CUDA else "cpu")
        self.shapes = Shapes(gpu=HAS_CUDA)
        self.csv_dir = Path(args.csv_dir or (RESULTS_DIR if HAS_CUDA else REPO / "runs" / "gpu_check_dry_run"))
        self.work = Path(args.work)
        self.train_impls = tuple(args.train_impls.split(","))
        self.row_base = _row_base(self.device, self.dry_run)
        # Ceilings that keep a hung step from eating the 8-minute budget silently.
        self.test_timeout, self.train_timeout = (300, 240) if HAS_CUDA else (300, 300)

    def write(self, name, rows):
        append_csv(self.csv_dir / name, rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="abcd", help="which of a, b, c, d to run (default: all)")
    parser.add_argument("--csv-dir", default=None, help="where the gpu_*.csv rows go")
    parser.add_argument("--work", default=None, help="part d's model, shards and runs (default: a temp dir)")
    parser.add_argument("--train-impls", default=",".join(DEFAULT_TRAIN_IMPLS),
                        help="the two model.attn_implementation values part d compares")
    args = parser.parse_args(argv)
    if len(args.train_impls.split(",")) != 2:
        parser.error("--train-impls takes two comma-separated names")
    if not set(args.parts) <= set(PARTS):
        parser.error(f"--parts takes letters among {''.join(PARTS)}")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        args.work = args.work or tmp
        ctx = Context(args)
        print(f"gpu-check on {ctx.row_base['device']} ({ctx.row_base['run']}), torch {ctx.row_base['torch']}, "
              f"triton {ctx.row_base['triton']}, git {ctx.row_base['git_sha']}", flush=True)
        results = {}
        for key in args.parts:
            title, fn = PARTS[key]
            print(f"\n== {key}. {title}", flush=True)
            start = time.perf_counter()
            try:
                status, detail = fn(ctx)
            except Exception as e:  # a part that crashes is a failed part; the others still run
                traceback.print_exc()
                status, detail = "FAIL", f"{type(e).__name__}: {e}"[:2000]
            results[key] = {"part": title, "status": status, "detail": detail,
                            "seconds": round(time.perf_counter() - start, 1)}
            print(f"-> {status} in {results[key]['seconds']} s: {detail}", flush=True)
    print("\n== summary")
    for key, r in results.items():
        print(f"{key}. {r['part']:<13} {r['status']:<8} {r['seconds']:>7.1f} s  {r['detail']}")
    if ctx.dry_run:
        print("\nno GPU found: this was the CPU dry run (tiny shapes, Triton interpreter); it tests the script, "
              "and none of its numbers is a GPU figure.")
    print(f"rows appended under {ctx.csv_dir}")
    print("GPU-CHECK-RESULT " + json.dumps({"dry_run": ctx.dry_run, "parts": results}))
    return 1 if any(r["status"] == "FAIL" for r in results.values()) else 0


def _select_triton_mode():
    """Compiled kernels on a GPU, the interpreter otherwise. Must run before anything imports triton (the kernels
    fix interpreted vs compiled at that import), so the script does it first; importers keep their own setting."""
    if HAS_CUDA:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = "1"


if __name__ == "__main__":
    _select_triton_mode()
    sys.exit(main())
