"""Benchmark swcm_kernels.attention.flash_attention against torch.nn.functional.scaled_dot_product_attention:
median time, TFLOP/s and peak memory for forward, backward and full (forward + backward).

Each (variant, mode) runs in its own subprocess; timing, memory and CSV helpers are shared with
bench_lm_head_ce.py (see there). Rows go to benchmarks/results/bench_attention.csv.

On a CPU only SDPA is measured: Triton runs there only in its interpreter, which is a correctness
tool (about 1000x slower), not a performance path, so the triton variant is skipped with a note.
FLOPs: forward 4*B*H*Tq*Tk*D (QK^T and PV), halved for causal; backward 2.5x forward (see flop_count).

    python benchmarks/bench_attention.py --seqlen 1024 --causal --padding
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from bench_lm_head_ce import (DTYPES, MODES, REPO, RESULTS_DIR, append_csv, device_name, git_sha, measure, run_workers,
                              versions)


def flop_count(mode, b, h, tq, tk, d, causal):
    """Attention FLOPs: forward = 2 matmuls of 2*B*H*Tq*Tk*D, halved when causal (half the scores are
    masked); backward = 2.5x forward (5 matmuls to the forward's 2, as FA2 counts)."""
    fwd = 4 * b * h * tq * tk * d // (2 if causal else 1)
    return {"forward": fwd, "backward": 5 * fwd // 2, "full": 7 * fwd // 2}[mode]


def _worker(args):
    variant, mode = args.worker.split(":")
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    tk = args.seqlen_k or args.seqlen
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(args.batch, args.heads, args.seqlen, args.head_dim, generator=gen).to(device, dtype)
    k, v = (torch.randn(args.batch, args.heads, tk, args.head_dim, generator=gen).to(device, dtype)
            for _ in range(2))
    for t in (q, k, v):
        t.requires_grad_()
    mask = None
    if args.padding:  # per-row lengths between half and all of Tk, as in a padded batch
        lengths = torch.randint(tk // 2 + 1, tk + 1, (args.batch,), generator=gen)
        mask = (torch.arange(tk)[None, :] < lengths[:, None]).to(device)

    if variant == "triton":
        from swcm_kernels.attention import flash_attention

        def forward():
            return flash_attention(q, k, v, causal=args.causal, key_padding_mask=mask)
    else:
        import torch.nn.functional as F

        sdpa_mask = None
        if mask is not None:  # SDPA takes one boolean (B, 1, Tq, Tk) mask; causal is bottom-right aligned
            sdpa_mask = mask[:, None, None, :]
            if args.causal:
                sdpa_mask = sdpa_mask & torch.ones(args.seqlen, tk, dtype=torch.bool, device=device).tril(
                    tk - args.seqlen)

        def forward():
            if sdpa_mask is None and args.causal and tk != args.seqlen:
                raise SystemExit("SDPA's is_causal is top-left aligned; use --padding for Tq != Tk causal")
            return F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask,
                                                  is_causal=args.causal and sdpa_mask is None)

    grad_out = torch.randn(args.batch, args.heads, args.seqlen, args.head_dim, generator=gen).to(device, dtype)

    def clear_grads():
        q.grad = k.grad = v.grad = None

    if mode == "forward":
        def prepare():
            clear_grads()

        def run(_):
            with torch.no_grad():
                return forward()
    elif mode == "backward":
        def prepare():
            clear_grads()
            return forward()

        def run(out):
            out.backward(grad_out)
    else:
        def prepare():
            clear_grads()

        def run(_):
            forward().backward(grad_out)

    seconds, peak = measure(prepare, run, device, args.repeats, args.warmup)
    torch_version, triton_version = versions()
    print("RESULT " + json.dumps(dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), git_sha=git_sha(),
        device=device_name(device), torch=torch_version, triton=triton_version, benchmark="attention",
        variant=variant, mode=mode, dtype=args.dtype,
        shape=f"B={args.batch} H={args.heads} Tq={args.seqlen} Tk={tk} D={args.head_dim}"
              f"{' causal' if args.causal else ''}{' padded' if args.padding else ''}",
        repeats=args.repeats, median_ms=round(seconds * 1e3, 3),
        tflops=round(flop_count(mode, args.batch, args.heads, args.seqlen, tk, args.head_dim, args.causal)
                     / seconds / 1e12, 4),
        peak_mem_mb=round(peak / 2**20, 1))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--seqlen", type=int, default=512, help="query length Tq")
    parser.add_argument("--seqlen-k", type=int, default=None, help="key length Tk (default: Tq)")
    parser.add_argument("--head-dim", type=int, default=64, choices=(32, 64, 128))
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--padding", action="store_true", help="random per-row key padding")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--variants", nargs="+", choices=("sdpa", "triton"), default=["sdpa", "triton"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--csv", type=Path, default=RESULTS_DIR / "bench_attention.csv")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        sys.path.insert(0, str(REPO))
        return _worker(args)

    variants = list(args.variants)
    if not args.device.startswith("cuda") and "triton" in variants:
        variants.remove("triton")
        print("note: triton skipped on CPU: the Triton interpreter is a correctness tool, not a performance path")
    if not variants:
        return
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k not in ("modes", "variants", "csv", "worker", "causal", "padding") and v is not None]
    forwarded += [f"--{flag}" for flag in ("causal", "padding") if getattr(args, flag)]
    print(f"attention B={args.batch} H={args.heads} Tq={args.seqlen} Tk={args.seqlen_k or args.seqlen} "
          f"D={args.head_dim} causal={args.causal} padding={args.padding} {args.dtype} on {args.device}", flush=True)
    rows = run_workers(Path(__file__).resolve(), variants, args.modes, forwarded)
    append_csv(args.csv, rows)

    print(f"\n{'variant':8s} {'mode':8s} {'median ms':>11s} {'TFLOP/s':>8s} {'peak MB':>9s}  time/sdpa")
    sdpa = {r["mode"]: r for r in rows if r["variant"] == "sdpa"}
    for r in rows:
        base = sdpa.get(r["mode"])
        ratio = f"{r['median_ms'] / base['median_ms']:9.3f}" if base and r is not base else ""
        print(f"{r['variant']:8s} {r['mode']:8s} {r['median_ms']:11.2f} {r['tflops']:8.4f} "
              f"{r['peak_mem_mb']:9.1f}  {ratio}")
    print(f"appended {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    main()
