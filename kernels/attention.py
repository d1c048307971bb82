"""Flash attention (FA2 style) in Triton: forward, backward, and an fp32 reference.

Supported
---------
- Shapes: q (B, H, Tq, D); k, v (B, H, Tk, D); the same B and H for q, k and v.
- Head dim D in {32, 64, 128}.
- Any lengths Tq, Tk >= 1 (ragged last blocks are masked on every load and store);
  cross attention with Tq != Tk.
- Bidirectional or causal. Causal is aligned bottom-right, as in flash-attn >= 2.1: query i sees
  key j iff j <= i + (Tk - Tq). With Tq == Tk that is the usual j <= i; with Tq > Tk the first
  Tq - Tk queries see no key.
- ``key_padding_mask`` (B, Tk) bool, True = keep, alone or combined with causal.
- A query row that sees no key (all its keys padding, or causal with Tq > Tk) gets a zero output
  and zero gradients, never NaN.
- dtypes fp32, fp16, bf16 (q, k, v share one dtype). Softmax statistics and all accumulators are
  fp32; the output and the gradients come back in the input dtype. fp32 inputs use IEEE fp32 dots
  (no TF32) so they match an fp32 reference.
- ``softmax_scale`` (default 1/sqrt(D)).
- Attention dropout ``dropout_p`` in [0, 1) on the probabilities, inside the kernels: a kept
  probability is scaled by 1/(1 - p). The keep mask is a function of (seed, b, h, query row, key
  column) only (Philox through ``tl.rand``, counter = the element's index in the (B, H, Tq, Tk)
  score tensor), so the backward regenerates the forward's mask and no mask is stored.
  ``seed=None`` draws one from torch's global (CPU) generator per call: ``torch.manual_seed`` makes
  runs reproducible, every call gets a fresh mask, and ``torch.utils.checkpoint`` (which restores
  that generator) recomputes the same one. ``dropout_mask`` returns the mask a call used.
  ``dropout_p = 0`` compiles the kernels without any dropout code (a constexpr branch).

Not supported
-------------
- Additive attention bias, arbitrary (Tq, Tk) masks, query padding masks (padded query rows get
  ordinary outputs; mask them downstream), GQA/MQA, mixed dtypes, other head dims (ValueError).
- Inputs that are not contiguous are copied to contiguous (B, H, T, D) first.

Devices
-------
CUDA tensors run the compiled kernels. CPU tensors run only under the Triton interpreter, which
needs ``TRITON_INTERPRET=1`` in the environment BEFORE triton is first imported; it is
for tests only (roughly 1000x slower than SDPA). Without it, ``flash_attention`` on CPU tensors
raises ``RuntimeError`` so callers can fall back to ``torch.nn.functional.scaled_dot_product_attention``.

Tested
------
On CPU under the interpreter by tests/test_kernel_attention.py: T in {1, 17, 97}, Tq/Tk = 17/33 and
33/17, D in {32, 64}, causal or not, padded or not, fp32, fp16 and bf16 (bf16 works there because the
interpreter path upcasts dot operands and rounds bf16 stores to nearest even by hand); dropout
against the reference given the kernel's own mask. The compiled CUDA path and the GPU-only tests
(``-m gpu``: D = 64/128, T up to 4096, with and without dropout) have not been run yet: see
docs/kernels.md.
"""

import math
import operator

import torch

from .triton_support import triton_interpreter_state

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional for importing this module; the kernels need it
    triton = None

# Triton fixes interpreter vs compiled when a kernel is decorated (here, at import) and, for its own
# tl.* helpers, when triton is first imported; both must agree for a launch to work.
_INTERPRET_REQUESTED, _INTERPRETED = triton_interpreter_state()

_SUPPORTED_HEAD_DIMS = (32, 64, 128)
_SEED_BOUND = 2**63  # seeds are non-negative int64 kernel arguments
_LOG2E = 1.4426950408889634  # softmax runs in base 2: exp(x) == exp2(x * log2(e))

if _INTERPRETED:
    # The interpreter costs per op, not per element, so use large tiles; 32 still splits the test
    # lengths (17, 33, 97) into several blocks with a ragged last one.
    _BLOCK_M, _BLOCK_N, _NUM_WARPS, _NUM_STAGES = 32, 32, 1, 1
else:
    # 64 x 64 tiles with 4 warps: the FA2 default for D <= 128. K and V tiles for D = 128 in fp32
    # take 2 * 64 * 128 * 4 B = 64 KiB per stage, so two stages fit in an A100/H100's shared memory.
    _BLOCK_M, _BLOCK_N, _NUM_WARPS, _NUM_STAGES = 64, 64, 4, 2


if triton is not None:
    from .triton_support import cast_for_store


    @triton.jit
    def _dot(a, b, DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr):
        """a @ b with fp32 accumulation. DOT_FP32 upcasts both operands (fp32 inputs, and the
        interpreter, whose bf16 dot is wrong); otherwise a is cast to b's 16-bit dtype."""
        if DOT_FP32:
            out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=DOT_PRECISION)
        else:
            out = tl.dot(a.to(b.dtype), b, input_precision=DOT_PRECISION)
        return out

    @triton.jit
    def _allowed(rows, cols, seq_q, seq_k, KEEP, batch, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
        """(BLOCK_M, BLOCK_N) bool: which (query, key) pairs take part in the softmax."""
        ok = (rows[:, None] < seq_q) & (cols[None, :] < seq_k)
        if HAS_MASK:
            keep = tl.load(KEEP + batch * seq_k + cols, mask=cols < seq_k, other=0)
            ok = ok & (keep[None, :] != 0)
        if CAUSAL:
            ok = ok & (cols[None, :] <= rows[:, None] + (seq_k - seq_q))
        return ok

    @triton.jit
    def _dropout_keep(seed, dropout_p, bh, rows, cols, seq_q, seq_k):
        """(BLOCK_M, BLOCK_N) bool, True = keep: Philox(seed) at counter (bh * Tq + row) * Tk + col, the
        element's index in the (B, H, Tq, Tk) scores, so every tile of every kernel that covers an element
        draws the same number for it whatever the block sizes. int64 (bh is): B*H*Tq*Tk can pass 2**32."""
        offsets = (bh * seq_q + rows[:, None]) * seq_k + cols[None, :]
        return tl.rand(seed, offsets) >= dropout_p

    @triton.jit(do_not_specialize=["seed"])
    def _dropout_mask_kernel(OUT, seed, dropout_p, seq_q, seq_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Writes _dropout_keep for a whole (B*H, Tq, Tk) int8 tensor (tests, debugging)."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        for start_n in range(0, seq_k, BLOCK_N):
            cols = start_n + tl.arange(0, BLOCK_N)
            keep = _dropout_keep(seed, dropout_p, bh, rows, cols, seq_q, seq_k)
            tl.store(OUT + (bh * seq_q + rows[:, None]) * seq_k + cols[None, :], keep.to(tl.int8),
                     mask=(rows[:, None] < seq_q) & (cols[None, :] < seq_k))

    # seed is not specialised on: a fresh seed per call must not compile a new kernel when it happens to be
    # divisible by 16 (Triton's default integer specialisation).
    @triton.jit(do_not_specialize=["seed"])
    def _attn_fwd_kernel(Q, K, V, KEEP, O, LSE, qk_scale, n_heads, seq_q, seq_k, seed, dropout_p,
                         CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, DOT_FP32: tl.constexpr,
                         DOT_PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)  # bh * T * D can pass 2**31 elements
        batch = bh // n_heads
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + bh * seq_q * HEAD_DIM + rows[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=rows[:, None] < seq_q, other=0.0)
        k_base = K + bh * seq_k * HEAD_DIM
        v_base = V + bh * seq_k * HEAD_DIM

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max (base-2 units)
        l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(s - m_i)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        hi = seq_k
        if CAUSAL:  # keys after the block's last query's diagonal are never visible
            hi = tl.minimum(seq_k, (pid_m + 1) * BLOCK_M + (seq_k - seq_q))
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n
            kv_off = cols[:, None] * HEAD_DIM + offs_d[None, :]
            k = tl.load(k_base + kv_off, mask=cols[:, None] < seq_k, other=0.0)
            v = tl.load(v_base + kv_off, mask=cols[:, None] < seq_k, other=0.0)
            s = _dot(q, tl.trans(k), DOT_FP32, DOT_PRECISION) * qk_scale
            s = tl.where(_allowed(rows, cols, seq_q, seq_k, KEEP, batch, CAUSAL, HAS_MASK), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row with no visible key yet has m_new = -inf; subtracting 0 instead keeps
            # exp2(-inf - m) = 0 rather than exp2(-inf + inf) = NaN.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            if DROPOUT:  # after l_i: the normaliser and the saved lse are the undropped softmax's
                p = tl.where(_dropout_keep(seed, dropout_p, bh, rows, cols, seq_q, seq_k), p, 0.0)
            acc = acc * alpha[:, None] + _dot(p, v, DOT_FP32, DOT_PRECISION)
            m_i = m_new

        has_key = l_i > 0.0
        l_safe = tl.where(has_key, l_i, 1.0)
        out = acc / l_safe[:, None]
        if DROPOUT:
            out = out * (1.0 / (1.0 - dropout_p))
        # +inf for rows without keys makes the backward's exp2(s - lse) exactly 0 there.
        lse = tl.where(has_key, m_i + tl.log2(l_safe), float("inf"))
        tl.store(O + bh * seq_q * HEAD_DIM + rows[:, None] * HEAD_DIM + offs_d[None, :],
                 cast_for_store(out, O, ROUND_BF16), mask=rows[:, None] < seq_q)
        tl.store(LSE + bh * seq_q + rows, lse, mask=rows < seq_q)

    @triton.jit
    def _attn_bwd_delta_kernel(O, DO, DELTA, seq_q, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
        """delta_i = sum_d O[i, d] * dO[i, d], the row term of the softmax backward."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)  # bh * T * D can pass 2**31 elements
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs = bh * seq_q * HEAD_DIM + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
        o = tl.load(O + offs, mask=rows[:, None] < seq_q, other=0.0).to(tl.float32)
        do = tl.load(DO + offs, mask=rows[:, None] < seq_q, other=0.0).to(tl.float32)
        tl.store(DELTA + bh * seq_q + rows, tl.sum(o * do, 1), mask=rows < seq_q)

    @triton.jit
    def _probs_and_score_grads(q, k, v, do, lse, delta, rows, cols, qk_scale, seq_q, seq_k, KEEP, batch, bh,
                               seed, dropout_p, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
                               DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr):
        """The backward's recomputation for one (query block, key block) tile: the probabilities that
        multiplied V (P, or with dropout Z * P / (1 - p) for the regenerated keep mask Z), and
        dS = P * (dP - delta), the gradient of the (scaled) scores, where dP = dO·Vᵀ, or Z * dO·Vᵀ / (1 - p)
        with dropout. delta = rowsum(dO * O) is still rowsum(P * dP) with dropout, as in FA2."""
        s = _dot(q, tl.trans(k), DOT_FP32, DOT_PRECISION) * qk_scale
        allowed = _allowed(rows, cols, seq_q, seq_k, KEEP, batch, CAUSAL, HAS_MASK)
        p = tl.where(allowed, tl.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), DOT_FP32, DOT_PRECISION)
        if DROPOUT:
            keep = _dropout_keep(seed, dropout_p, bh, rows, cols, seq_q, seq_k)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        if DROPOUT:
            p = tl.where(keep, p * (1.0 / (1.0 - dropout_p)), 0.0)
        return p, ds

    @triton.jit(do_not_specialize=["seed"])
    def _attn_bwd_dkdv_kernel(Q, K, V, KEEP, DO, LSE, DELTA, DK, DV, qk_scale, softmax_scale,
                              n_heads, seq_q, seq_k, seed, dropout_p,
                              CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
                              DOT_FP32: tl.constexpr,
                              DOT_PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
        """One program per key block: loop over query blocks, accumulate dK and dV in registers."""
        pid_n = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)  # bh * T * D can pass 2**31 elements
        batch = bh // n_heads
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        kv_off = bh * seq_k * HEAD_DIM + cols[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(K + kv_off, mask=cols[:, None] < seq_k, other=0.0)
        v = tl.load(V + kv_off, mask=cols[:, None] < seq_k, other=0.0)
        q_base = Q + bh * seq_q * HEAD_DIM
        do_base = DO + bh * seq_q * HEAD_DIM

        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        lo = 0
        if CAUSAL:  # queries before the first one that sees this block's first key contribute 0
            lo = tl.maximum(0, pid_n * BLOCK_N - (seq_k - seq_q))
            lo = (lo // BLOCK_M) * BLOCK_M
        for start_m in range(lo, seq_q, BLOCK_M):
            rows = start_m + offs_m
            q_off = rows[:, None] * HEAD_DIM + offs_d[None, :]
            q = tl.load(q_base + q_off, mask=rows[:, None] < seq_q, other=0.0)
            do = tl.load(do_base + q_off, mask=rows[:, None] < seq_q, other=0.0)
            lse = tl.load(LSE + bh * seq_q + rows, mask=rows < seq_q, other=float("inf"))
            delta = tl.load(DELTA + bh * seq_q + rows, mask=rows < seq_q, other=0.0)
            p, ds = _probs_and_score_grads(q, k, v, do, lse, delta, rows, cols, qk_scale, seq_q, seq_k, KEEP,
                                           batch, bh, seed, dropout_p, CAUSAL, HAS_MASK, DROPOUT, DOT_FP32,
                                           DOT_PRECISION)
            dv += _dot(tl.trans(p), do, DOT_FP32, DOT_PRECISION)
            dk += _dot(tl.trans(ds), q, DOT_FP32, DOT_PRECISION)
        dk = dk * softmax_scale
        tl.store(DK + kv_off, cast_for_store(dk, DK, ROUND_BF16), mask=cols[:, None] < seq_k)
        tl.store(DV + kv_off, cast_for_store(dv, DV, ROUND_BF16), mask=cols[:, None] < seq_k)

    @triton.jit(do_not_specialize=["seed"])
    def _attn_bwd_dq_kernel(Q, K, V, KEEP, DO, LSE, DELTA, DQ, qk_scale, softmax_scale,
                            n_heads, seq_q, seq_k, seed, dropout_p,
                            CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
                            DOT_FP32: tl.constexpr,
                            DOT_PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
        """One program per query block: loop over key blocks, accumulate dQ in registers."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)  # bh * T * D can pass 2**31 elements
        batch = bh // n_heads
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q_off = bh * seq_q * HEAD_DIM + rows[:, None] * HEAD_DIM + offs_d[None, :]
        q = tl.load(Q + q_off, mask=rows[:, None] < seq_q, other=0.0)
        do = tl.load(DO + q_off, mask=rows[:, None] < seq_q, other=0.0)
        lse = tl.load(LSE + bh * seq_q + rows, mask=rows < seq_q, other=float("inf"))
        delta = tl.load(DELTA + bh * seq_q + rows, mask=rows < seq_q, other=0.0)
        k_base = K + bh * seq_k * HEAD_DIM
        v_base = V + bh * seq_k * HEAD_DIM

        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        hi = seq_k
        if CAUSAL:
            hi = tl.minimum(seq_k, (pid_m + 1) * BLOCK_M + (seq_k - seq_q))
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n
            kv_off = cols[:, None] * HEAD_DIM + offs_d[None, :]
            k = tl.load(k_base + kv_off, mask=cols[:, None] < seq_k, other=0.0)
            v = tl.load(v_base + kv_off, mask=cols[:, None] < seq_k, other=0.0)
            _, ds = _probs_and_score_grads(q, k, v, do, lse, delta, rows, cols, qk_scale, seq_q, seq_k, KEEP,
                                           batch, bh, seed, dropout_p, CAUSAL, HAS_MASK, DROPOUT, DOT_FP32,
                                           DOT_PRECISION)
            dq += _dot(ds, k, DOT_FP32, DOT_PRECISION)
        dq = dq * softmax_scale
        tl.store(DQ + q_off, cast_for_store(dq, DQ, ROUND_BF16), mask=rows[:, None] < seq_q)


def _launch_args(q, causal, keep, seed, dropout_p):
    """Arguments shared by every attention kernel launch for these inputs: the dropout seed and rate, and the
    constexpr/meta ones. seed None = no dropout code at all (DROPOUT=False)."""
    fp32 = q.dtype == torch.float32
    return dict(
        seed=0 if seed is None else seed,
        dropout_p=float(dropout_p),
        CAUSAL=causal,
        HAS_MASK=keep is not None,
        DROPOUT=seed is not None,
        DOT_FP32=fp32 or _INTERPRETED,
        DOT_PRECISION="ieee" if fp32 else "tf32",  # "tf32" is Triton's default and unused for 16-bit
        ROUND_BF16=_INTERPRETED and q.dtype == torch.bfloat16,
        BLOCK_M=_BLOCK_M,
        BLOCK_N=_BLOCK_N,
        HEAD_DIM=q.shape[-1],
        num_warps=_NUM_WARPS,
        num_stages=_NUM_STAGES,
    )


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: forward saves (q, k, v, o, lse) and the dropout seed; backward recomputes the
    probabilities and the dropout mask. seed None runs the kernels without dropout; with a seed, dropout_p
    is applied (dropout_p = 0 with a seed runs the dropout code with every element kept)."""

    @staticmethod
    def forward(ctx, q, k, v, keep, causal, softmax_scale, dropout_p, seed):
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        o = torch.empty_like(q)
        lse = torch.empty((B * H, Tq), device=q.device, dtype=torch.float32)
        # A dummy pointer when there is no mask: HAS_MASK=False never reads it.
        keep_arg = keep if keep is not None else lse
        meta = _launch_args(q, causal, keep, seed, dropout_p)
        _attn_fwd_kernel[(triton.cdiv(Tq, _BLOCK_M), B * H)](
            q, k, v, keep_arg, o, lse, softmax_scale * _LOG2E, H, Tq, Tk, **meta)
        ctx.save_for_backward(q, k, v, keep, o, lse)
        ctx.causal = causal
        ctx.softmax_scale = softmax_scale
        ctx.dropout_p = dropout_p
        ctx.seed = seed
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, keep, o, lse = ctx.saved_tensors
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        do = do.contiguous()
        delta = torch.empty_like(lse)
        _attn_bwd_delta_kernel[(triton.cdiv(Tq, _BLOCK_M), B * H)](
            o, do, delta, Tq, BLOCK_M=_BLOCK_M, HEAD_DIM=D, num_warps=_NUM_WARPS)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        keep_arg = keep if keep is not None else lse
        meta = _launch_args(q, ctx.causal, keep, ctx.seed, ctx.dropout_p)
        scale = ctx.softmax_scale
        _attn_bwd_dkdv_kernel[(triton.cdiv(Tk, _BLOCK_N), B * H)](
            q, k, v, keep_arg, do, lse, delta, dk, dv, scale * _LOG2E, scale, H, Tq, Tk, **meta)
        _attn_bwd_dq_kernel[(triton.cdiv(Tq, _BLOCK_M), B * H)](
            q, k, v, keep_arg, do, lse, delta, dq, scale * _LOG2E, scale, H, Tq, Tk, **meta)
        return dq, dk, dv, None, None, None, None, None


def _check_dropout_p(dropout_p):
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")


def _checked_seed(seed):
    """seed as a Python int in [0, 2**63) (TypeError for non-integers, ValueError out of range)."""
    seed = operator.index(seed)
    if not 0 <= seed < _SEED_BOUND:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


def _check_can_launch(device):
    """RuntimeError unless triton can launch kernels on tensors of this device here."""
    if triton is None:
        raise RuntimeError("swcm_kernels.attention needs triton, which failed to import")
    if _INTERPRET_REQUESTED and not _INTERPRETED:
        raise RuntimeError("TRITON_INTERPRET=1 was set after triton was first imported, so its kernels can run "
                           "neither interpreted nor compiled; set it before anything imports triton")
    if device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError(f"swcm_kernels.attention got {device.type} tensors but triton can only launch on CUDA; "
                           "set TRITON_INTERPRET=1 before triton is first imported to run the (slow) "
                           "interpreter, or fall back to scaled_dot_product_attention")


def flash_attention(q, k, v, *, causal=False, key_padding_mask=None, softmax_scale=None, dropout_p=0.0, seed=None):
    """softmax(q k^T * scale + masks) v, computed by the Triton kernels, differentiable in q, k, v; with
    dropout_p > 0 the probabilities go through dropout (kept ones scaled by 1/(1 - dropout_p)).

    q: (B, H, Tq, D); k, v: (B, H, Tk, D); key_padding_mask: (B, Tk) bool, True = keep.
    seed: the dropout mask's seed (an int in [0, 2**63)); None draws one from torch's global generator.
    The mask used is ``dropout_mask(seed, B, H, Tq, Tk, dropout_p)``. dropout_p = 0 runs no dropout code.
    Returns (B, H, Tq, D) in q's dtype. See the module docstring for what is supported.
    Raises ValueError for unsupported arguments, RuntimeError when triton cannot run on these tensors
    (CPU tensors without the interpreter, TRITON_INTERPRET=1 set too late, or triton missing); callers can catch it and
    fall back to SDPA.
    """
    _check_dropout_p(dropout_p)
    _check_can_launch(q.device)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D (B, H, T, D)")
    B, H, Tq, D = q.shape
    if k.shape != v.shape or k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if D not in _SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {D} not supported; supported: {_SUPPORTED_HEAD_DIMS}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype among fp32/fp16/bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if Tq == 0 or k.shape[2] == 0:
        raise ValueError("empty sequences are not supported")
    keep = None
    if key_padding_mask is not None:
        if key_padding_mask.shape != (B, k.shape[2]) or key_padding_mask.dtype != torch.bool:
            raise ValueError(f"key_padding_mask must be bool (B, Tk) = {(B, k.shape[2])}, "
                             f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
        keep = key_padding_mask.to(device=q.device, dtype=torch.int8).contiguous()
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else float(softmax_scale)
    if dropout_p == 0.0:
        seed = None
    else:
        seed = draw_seed() if seed is None else _checked_seed(seed)
    return FlashAttentionFunction.apply(q.contiguous(), k.contiguous(), v.contiguous(), keep, bool(causal), scale,
                                        float(dropout_p), seed)


def draw_seed():
    """A dropout seed from torch's global CPU generator (no device sync; torch.manual_seed fixes the sequence)."""
    return int(torch.randint(_SEED_BOUND - 1, (), dtype=torch.int64).item())  # the exclusive bound must fit int64


def dropout_mask(seed, B, H, Tq, Tk, dropout_p, device=None):
    """The keep mask (B, H, Tq, Tk) bool, True = kept, that ``flash_attention(..., dropout_p=dropout_p,
    seed=seed)`` applies to inputs of these shapes, computed by the kernels' own RNG code. It does not depend on
    D, dtypes, causal or padding (masked-out elements are dropped by the softmax whatever the mask says).
    device: where to run (default CUDA when available, else CPU, which needs the interpreter)."""
    _check_dropout_p(dropout_p)
    seed = _checked_seed(seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _check_can_launch(device)
    out = torch.empty((B, H, Tq, Tk), device=device, dtype=torch.int8)
    _dropout_mask_kernel[(triton.cdiv(Tq, _BLOCK_M), B * H)](
        out, seed, float(dropout_p), Tq, Tk, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, num_warps=_NUM_WARPS)
    return out.bool()


def attention_reference(q, k, v, *, causal=False, key_padding_mask=None, softmax_scale=None, upcast=True,
                        dropout_keep=None, dropout_p=0.0):
    """Plain-PyTorch attention with the same semantics as flash_attention (bottom-right causal,
    zero output for rows without keys). upcast=True computes in fp32 (fp64 inputs stay fp64);
    upcast=False computes in the input dtype, the same-precision baseline used by the tests.
    dropout_keep: a given (B, H, Tq, Tk) bool keep mask applied to the probabilities, kept ones scaled by
    1/(1 - dropout_p) (torch's dropout, with the mask chosen by the caller).
    Returns the result in q's dtype."""
    dtype = q.dtype
    if upcast:
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        q, k, v = q.to(compute), k.to(compute), v.to(compute)
    Tq, Tk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else softmax_scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if causal:
        allowed = torch.tril(allowed, diagonal=Tk - Tq)
    allowed = allowed.expand(q.shape[0], 1, Tq, Tk)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :].to(q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    no_key = ~allowed.any(dim=-1, keepdim=True)
    # Rows with no key would be softmax(all -inf) = NaN; give them finite scores, then zero them.
    probs = torch.softmax(scores.masked_fill(no_key, 0.0), dim=-1).masked_fill(~allowed, 0.0)
    if dropout_keep is not None:
        probs = probs.masked_fill(~dropout_keep.to(q.device), 0.0) / (1.0 - dropout_p)
    return torch.matmul(probs, v).to(dtype)
