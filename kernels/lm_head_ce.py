"""Fused LM head + cross-entropy (Liger style): loss and all gradients without the N x V logits.

``fused_linear_cross_entropy(hidden, weight, labels, bias)`` equals
``F.cross_entropy(F.linear(hidden, weight, bias), labels, ignore_index=..., label_smoothing=...)``
(mean over non-ignored tokens), but walks the rows in chunks. For each chunk it computes the chunk's
logits, the per-row softmax / cross-entropy / label smoothing, overwrites the logits with their
gradient, and immediately folds that into grad_hidden, grad_weight and grad_bias. The backward
only scales those stored gradients by grad_output.

Supported: hidden (N, H) and weight (V, H) in fp32/bf16/fp16 (same dtype), optional bias (V),
labels (N) int64 in [0, V) or ``ignore_index``, ``label_smoothing`` in [0, 1], ``weight`` shared with
other parts of the graph (tied embedding: autograd adds this gradient to the others).
Accumulation is fp32 (softmax statistics, per-token losses, the weight/bias gradient sums); the
logits matmuls run in the input dtype, as F.linear does. The loss is an fp32 scalar; gradients come
back in the input dtypes. If every label is ignored the loss is 0 with all-zero gradients.

Not supported: reductions other than mean, class weights, z-loss, softcapping, labels outside
[0, V) (ValueError), calling backward twice on one graph (RuntimeError: the stored gradients are
consumed by the first backward).

impl="triton" runs the row softmax / CE in a Triton kernel (CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1 set before import); impl="torch" runs the same chunked algorithm with PyTorch
ops (any device; the CPU path); impl="auto" picks triton when it can launch, else torch.
Tested on CPU: both impls (triton under the interpreter) by tests/test_kernel_lm_head_ce.py.
"""

import torch
import torch.nn.functional as F

from .triton_support import triton_interpreter_state

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch impl works without triton
    triton = None

# Triton kernels run on CPU tensors only if triton was imported with TRITON_INTERPRET=1, and on CUDA
# only if it was not (see triton_support.triton_interpreter_state).
_INTERPRET_REQUESTED, _INTERPRETED = triton_interpreter_state()

# Columns per step of the row kernel. On a GPU, 8192 fp32 values are 32 KiB per row block, a size
# 8 warps stream well. The interpreter costs per op, so it wants big blocks; 512 still splits the
# tests' V = 1031 into three blocks with a ragged last one.
_BLOCK_V, _NUM_WARPS = (512, 1) if _INTERPRETED else (8192, 8)

# Lower bound on rows per chunk. Every chunk does a read-modify-write of the V x H fp32 weight
# gradient (8 bytes per element) next to 6 * rows FLOPs per element for its three matmuls
# (logits, grad_hidden, grad_weight), i.e. 0.75 * rows FLOP per byte of that traffic; skinny chunks
# also run the matmuls below peak. Measured on this project's 2-core CPU at N = 4096, H = 768,
# V = 250,002 (fp32, one noisy run each): 128 and 256 rows took 41 s, 512 -> 30 s, 1024 -> 34 s,
# 2048 -> 22 s per step, naive 72 s; 1024 rows keep the chunk's logits at 1.0 GB (peak 1.8 GB
# against the naive 12 GB) while staying in the fast range.
_MIN_CHUNK_ROWS = 1024


def _default_chunk_size(n_rows, hidden_size, vocab_size):
    """Rows per chunk: chunk logits about as large as the hidden states (Liger's rule, without its
    rounding to a power of two, which can double the chunk), but at least
    _MIN_CHUNK_ROWS rows and at most n_rows.

    Logits of c rows hold c * V values and the hidden states N * H, so c = N * H / V. For N = 4096,
    H = 768, V = 250,002 that is 12.6 rows (a 12.6 MiB fp32 chunk), which would make the per-chunk
    weight-gradient traffic dominate (see _MIN_CHUNK_ROWS), so the floor wins: 1024 rows = 1.0 GB
    of fp32 logits, a quarter of the 4.1 GB full logits and far below the naive path's peak.
    """
    same_size_rows = -(-n_rows * hidden_size // vocab_size)  # ceil(N * H / V)
    return max(1, min(n_rows, max(same_size_rows, _MIN_CHUNK_ROWS)))


if triton is not None:

    from .triton_support import cast_for_store

    @triton.jit
    def _ce_rows_kernel(LOGITS, stride_row, LABELS, LOSSES, inv_n_valid, n_cols, ignore_index, label_smoothing,
                        HAS_SMOOTHING: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK_V: tl.constexpr):
        """One program per row: loss into LOSSES[row] (fp32), and the row of LOGITS overwritten with
        d(mean loss)/d(logits) = (softmax - eps/V - (1-eps) * onehot) / n_valid, or 0 if ignored."""
        row = tl.program_id(0).to(tl.int64)
        ptr = LOGITS + row * stride_row
        label = tl.load(LABELS + row)
        offs = tl.arange(0, BLOCK_V)
        if label == ignore_index:
            for start in range(0, n_cols, BLOCK_V):
                cols = start + offs
                tl.store(ptr + cols, tl.zeros([BLOCK_V], tl.float32).to(LOGITS.dtype.element_ty), mask=cols < n_cols)
            tl.store(LOSSES + row, 0.0)
            return

        # Pass 1: online max and sum of exp (and the plain sum of logits for smoothing).
        m = float("-inf")
        d = 0.0
        sum_x = 0.0
        for start in range(0, n_cols, BLOCK_V):
            cols = start + offs
            x = tl.load(ptr + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, 0))
            d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
            if HAS_SMOOTHING:
                sum_x += tl.sum(tl.where(cols < n_cols, x, 0.0), 0)
            m = m_new
        lse = m + tl.log(d)
        x_label = tl.load(ptr + label).to(tl.float32)
        loss = lse - x_label
        if HAS_SMOOTHING:
            # F.cross_entropy: (1 - eps) * nll + eps * mean_j(-log p_j), and -log p_j = lse - x_j.
            loss = (1.0 - label_smoothing) * loss + label_smoothing * (lse - sum_x / n_cols)

        # Pass 2: the gradient, written over the logits.
        for start in range(0, n_cols, BLOCK_V):
            cols = start + offs
            x = tl.load(ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
            g = tl.exp(x - lse)
            if HAS_SMOOTHING:
                g = g - label_smoothing / n_cols
                g = tl.where(cols == label, g - (1.0 - label_smoothing), g)
            else:
                g = tl.where(cols == label, g - 1.0, g)
            tl.store(ptr + cols, cast_for_store(g * inv_n_valid, LOGITS, ROUND_BF16), mask=cols < n_cols)
        tl.store(LOSSES + row, loss)


def _ce_rows_triton(logits, labels, inv_n_valid, ignore_index, label_smoothing):
    """Per-row losses (fp32); logits (rows, V) is overwritten with its gradient (Triton kernel)."""
    rows, vocab = logits.shape
    losses = torch.empty(rows, device=logits.device, dtype=torch.float32)
    _ce_rows_kernel[(rows,)](logits, logits.stride(0), labels, losses, inv_n_valid, vocab, ignore_index,
                             label_smoothing, HAS_SMOOTHING=label_smoothing > 0.0,
                             ROUND_BF16=_INTERPRETED and logits.dtype == torch.bfloat16, BLOCK_V=_BLOCK_V,
                             num_warps=_NUM_WARPS)
    return losses


def _ce_rows_torch(logits, labels, inv_n_valid, ignore_index, label_smoothing):
    """Same contract as _ce_rows_triton with PyTorch ops, in place on an fp32 buffer where possible."""
    x = logits if logits.dtype == torch.float32 else logits.float()
    valid = labels != ignore_index
    safe_labels = labels.masked_fill(~valid, 0)[:, None]
    x.sub_(x.amax(dim=1, keepdim=True))  # shifted logits: lse and every x_j move together
    nll = x.gather(1, safe_labels).squeeze(1).neg_()
    mean_x = x.mean(dim=1) if label_smoothing > 0.0 else None
    sum_exp = x.exp_().sum(dim=1)
    lse = sum_exp.log()
    losses = nll.add_(lse)
    if label_smoothing > 0.0:
        losses = (1.0 - label_smoothing) * losses + label_smoothing * (lse - mean_x)
    row_weight = valid.float() * inv_n_valid  # d(mean loss)/d(row loss): 1/n_valid or 0
    x.mul_((row_weight / sum_exp)[:, None])  # softmax * row_weight
    if label_smoothing > 0.0:
        x.sub_((row_weight * (label_smoothing / x.shape[1]))[:, None])
    x.scatter_add_(1, safe_labels, (row_weight * -(1.0 - label_smoothing))[:, None])
    if x is not logits:
        logits.copy_(x)
    return losses.masked_fill_(~valid, 0.0)


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """Forward computes the loss and every gradient chunk by chunk; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, label_smoothing, chunk_size, use_triton,
                need_grads):
        n_rows, _ = hidden.shape
        vocab = weight.shape[0]
        valid = labels != ignore_index
        # One host sync: the mean's denominator is folded into each chunk's logit gradient, and
        # out-of-range labels would otherwise read out of bounds in the kernel.
        n_valid, n_bad = torch.stack([valid.sum(), (valid & ((labels < 0) | (labels >= vocab))).sum()]).tolist()
        if n_bad:
            raise ValueError(f"{n_bad} labels are outside [0, {vocab}) and not ignore_index={ignore_index}")
        inv_n_valid = 1.0 / max(n_valid, 1)
        rows_fn = _ce_rows_triton if use_triton else _ce_rows_torch

        token_losses = torch.empty(n_rows, device=hidden.device, dtype=torch.float32)
        need_hidden, need_weight, need_bias = need_grads  # only what autograd will ask for is computed
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros(vocab, device=weight.device, dtype=torch.float32) if need_bias else None
        for start in range(0, n_rows, chunk_size):
            end = min(start + chunk_size, n_rows)
            h = hidden[start:end]
            logits = torch.mm(h, weight.t()) if bias is None else torch.addmm(bias, h, weight.t())
            token_losses[start:end] = rows_fn(logits, labels[start:end], inv_n_valid, ignore_index, label_smoothing)
            grad_logits = logits  # overwritten in place by rows_fn, in the input dtype
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[start:end])
            if grad_weight is not None and grad_logits.dtype == torch.float32:
                grad_weight.addmm_(grad_logits.t(), h)
            elif grad_weight is not None:  # a 16-bit V x H temporary, then fp32 accumulation across chunks
                grad_weight += torch.mm(grad_logits.t(), h)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(dim=0, dtype=torch.float32)
            del logits, grad_logits
        if any(need_grads):
            ctx.grads = (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                         None if grad_bias is None else grad_bias.to(bias.dtype))
        loss = token_losses.sum() * inv_n_valid
        ctx.mark_non_differentiable(token_losses)
        return loss, token_losses

    @staticmethod
    def backward(ctx, grad_loss, _grad_token_losses):
        grads = getattr(ctx, "grads", None)
        if grads is None:
            raise RuntimeError("fused_linear_cross_entropy: backward ran twice on one graph (or the forward ran "
                               "without grad); the chunked gradients are computed once in the forward")
        ctx.grads = None
        scaled = tuple(None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in grads)
        return scaled + (None,) * 6


def resolve_impl(device: torch.device) -> str:
    """What impl="auto" runs for tensors on `device`: "triton" when its kernel can launch there, else "torch"."""
    can_launch = triton is not None and _INTERPRET_REQUESTED == _INTERPRETED and (
        device.type == "cuda" or _INTERPRETED)
    return "triton" if can_launch else "torch"


def fused_linear_cross_entropy(hidden, weight, labels, bias=None, *, ignore_index=-100, label_smoothing=0.0,
                               chunk_size=None, return_token_losses=False, impl="auto"):
    """Mean cross-entropy of F.linear(hidden, weight, bias) against labels, never materialising the
    N x V logits. hidden (N, H), weight (V, H), bias (V) or None, labels (N).

    Returns the fp32 scalar loss, or (loss, token_losses) with return_token_losses=True, where
    token_losses is a detached fp32 (N,) tensor of per-token losses (0 at ignored positions).
    chunk_size: rows per chunk (default: see _default_chunk_size). impl: "triton", "torch" or "auto".
    """
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden (N, H) and weight (V, H) expected, got {tuple(hidden.shape)}, {tuple(weight.shape)}")
    if labels.shape != (hidden.shape[0],):
        raise ValueError(f"labels must be ({hidden.shape[0]},), got {tuple(labels.shape)}")
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise ValueError("hidden, weight and bias must share one dtype")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    triton_can_run = resolve_impl(hidden.device) == "triton"
    if impl == "triton" and not triton_can_run:
        raise RuntimeError("impl='triton' needs triton with CUDA tensors, or TRITON_INTERPRET=1 set before triton "
                           "is first imported; use impl='torch' or 'auto'")
    use_triton = impl == "triton" or (impl == "auto" and triton_can_run)
    n_rows = hidden.shape[0]
    if chunk_size is None:
        chunk_size = _default_chunk_size(n_rows, hidden.shape[1], weight.shape[0])
    need_grads = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in (hidden, weight, bias))
    loss, token_losses = FusedLinearCrossEntropyFunction.apply(
        hidden.contiguous(), weight.contiguous(), bias, labels.long().contiguous(), int(ignore_index),
        float(label_smoothing), max(1, int(chunk_size)), use_triton, need_grads)
    return (loss, token_losses) if return_token_losses else loss


def lm_head_ce_reference(hidden, weight, labels, bias=None, *, ignore_index=-100, label_smoothing=0.0):
    """The unfused definition: F.linear then F.cross_entropy (mean over non-ignored tokens), in the
    input dtype. Note F.cross_entropy gives NaN when every label is ignored; the fused op gives 0."""
    logits = F.linear(hidden, weight, bias)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, label_smoothing=label_smoothing)
