"""Tolerance rules for the kernel tests, written once.

Attention (flash-attention's rule): a kernel result is accepted when its max abs error against a
high-precision reference is at most 2x the error of a plain PyTorch implementation run in the same
precision as the kernel's inputs, plus a small absolute floor per dtype (the floor only matters when
the same-precision baseline happens to be almost exact, e.g. tiny sequences).

Fused LM head + CE: |actual - expected| <= atol + rtol * max|expected| elementwise-max, per dtype.

Also: run_without_interpreter + COMPILE_SM90_PRELUDE, to compile the CUDA kernels on a CPU machine.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

# Absolute floors for the 2x rule: about 10 fp32 ulps at magnitude 1; for 16-bit inputs a quarter of
# an ulp at magnitude 1 (fp16 eps = 9.8e-4, bf16 eps = 7.8e-3).
ATTENTION_ABS_FLOOR = {torch.float32: 1e-6, torch.float16: 2.5e-4, torch.bfloat16: 2e-3}

# (atol, rtol) for the fused CE's loss and gradients. fp32: both sides accumulate in fp32 with a
# different order. 16-bit: the logits are rounded to the input dtype (as F.linear does) and the
# gradients are returned in it, so allow a few ulps of the input dtype relative to the largest value.
CE_TOLERANCE = {
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-5, 5e-3),
    torch.bfloat16: (1e-4, 2e-2),
}


def max_abs_err(actual, expected):
    """Max |actual - expected| in float64, as a Python float."""
    return (actual.detach().double() - expected.detach().double()).abs().max().item()


def assert_within_2x_baseline(name, kernel, baseline, truth, dtype):
    """The 2x rule above; returns the kernel's error so tests can report it."""
    err = max_abs_err(kernel, truth)
    base = max_abs_err(baseline, truth)
    bound = 2.0 * base + ATTENTION_ABS_FLOOR[dtype]
    assert err <= bound, f"{name}: kernel err {err:.3e} > 2 * baseline err {base:.3e} + floor ({bound:.3e})"
    return err


def assert_close_table(name, actual, expected, dtype):
    """The CE table rule above; returns the max abs error."""
    atol, rtol = CE_TOLERANCE[dtype]
    err = max_abs_err(actual, expected)
    bound = atol + rtol * expected.detach().double().abs().max().item()
    assert err <= bound, f"{name}: max abs err {err:.3e} > {bound:.3e} (atol {atol}, rtol {rtol}, {dtype})"
    return err


REPO = Path(__file__).resolve().parents[1]

# Prelude for run_without_interpreter scripts: compile a @triton.jit kernel for an H100 (sm_90)
# without a GPU. Triton lowers to PTX and runs its bundled ptxas, so compiled-mode-only errors that
# the interpreter accepts (loop-carried types, dot shapes, shared memory) show up on a CPU machine.
COMPILE_SM90_PRELUDE = '''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

H100_MAX_SHARED_BYTES = 227 * 1024  # dynamic shared memory per block on sm_90


def compile_sm90(fn, signature, constexprs, **options):
    src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    assert kernel.metadata.shared <= H100_MAX_SHARED_BYTES, (fn.__name__, kernel.metadata.shared)
    print(fn.__name__, constexprs, "shared", kernel.metadata.shared)
'''


def run_without_interpreter(code, timeout=600):
    """Run python code in a fresh process without TRITON_INTERPRET (and without a GPU), from the repo
    root; fails the test with the output unless it exits 0 and prints OK last."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=timeout)
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 0 and lines and lines[-1] == "OK", f"rc {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout
