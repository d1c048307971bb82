"""What the trainer logs: model FLOPs (for MFU), device peak FLOP/s, memory, and loss per objective/language."""

from __future__ import annotations

import time

import torch

# Dense bf16 peak (no sparsity) of common training GPUs, in FLOP/s. MFU = achieved model FLOP/s / peak.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
                  "L40S": 362e12, "A10": 125e12, "V100": 125e12}


def model_flops(config, src_lens: torch.Tensor, tgt_lens: torch.Tensor) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one batch, counting matmuls only.

    `src_lens` / `tgt_lens` are the real (unpadded) lengths per sample. Per token, a dense layer with P
    weights costs 2P FLOPs; attention costs 4·L·H per query token (QKᵀ and AV over L keys). The LM head
    (2·H·V per target token) is counted: with a 135k-250k vocabulary it is a large share of the total.
    """
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    n_custom = config.num_hidden_layers
    n_normal = config.decoder_layers - n_custom
    s = src_lens.double()
    t = tgt_lens.double()
    attn_proj = 4 * h * h            # Q, K, V, output
    ffn = 2 * h * i
    enc = n_custom * (2 * (attn_proj + ffn) * s.sum() + 4 * h * (s * s).sum())
    # Decoder layers: causal self-attention (counted as full T, as kernels compute it) and cross-attention
    # whose K/V projections run over the source tokens.
    self_attn = 2 * attn_proj * t.sum() + 4 * h * (t * t).sum()
    cross_attn = 2 * (2 * h * h) * t.sum() + 2 * (2 * h * h) * s.sum() + 4 * h * (s * t).sum()
    dec = n_custom * (self_attn + cross_attn + 2 * (2 * ffn) * t.sum()) \
        + n_normal * (self_attn + cross_attn + 2 * ffn * t.sum())
    head = 2 * h * v * t.sum()
    return float(3 * (enc + dec + head))


def device_peak_flops(device: torch.device) -> float:
    """Peak FLOP/s of `device`: a table for known GPUs, otherwise a measured fp32 matmul rate (so CPU MFU
    reads as a fraction of what this machine's BLAS reaches)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                return peak
    n = 512
    g = torch.Generator().manual_seed(0)  # not the global generator: that one decides the dropout masks
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.1:   # ~10 products: a steady rate, at a cost every rank pays each start
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def memory_gb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocator peak on GPU, peak RSS (VmHWM) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


class LossTracker:
    """Per-token loss by objective and by language between two log steps. The loss sums stay on the device (no
    host synchronisation per micro-batch); token counts come from the labels, which are on the host."""

    def __init__(self, keys, device: torch.device):
        self.keys = list(keys)
        self.index = {k: n for n, k in enumerate(self.keys)}
        self.device = device
        self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=device)
        self.counts = torch.zeros(len(self.keys), dtype=torch.float64)

    def add(self, token_losses: torch.Tensor, scored: torch.Tensor, keys_per_sample) -> None:
        """Add one micro-batch: `token_losses` (B, T) on the device, 0 where not scored; `scored` (B, T) bool on the
        host; `keys_per_sample` B iterables of keys (unknown keys are ignored)."""
        rows, slots = [], []
        for b, keys in enumerate(keys_per_sample):
            for key in keys:
                if key in self.index:
                    rows.append(b)
                    slots.append(self.index[key])
        if not rows:
            return
        rows_t, slots_t = torch.tensor(rows), torch.tensor(slots)
        self.counts.index_add_(0, slots_t, scored.sum(dim=1).double()[rows_t])
        per_sample = token_losses.detach().sum(dim=1).double()
        self.sums.index_add_(0, slots_t.to(self.device), per_sample[rows_t.to(self.device)])

    def reduce_and_reset(self, all_reduce) -> dict[str, float]:
        """Mean loss per key over every rank since the last call (keys with no tokens are left out); collective."""
        both = torch.cat([self.sums, self.counts.to(self.device)])
        all_reduce(both)
        values = both.tolist()
        n = len(self.keys)
        self.sums.zero_()
        self.counts.zero_()
        return {k: values[i] / values[n + i] for i, k in enumerate(self.keys) if values[n + i] > 0}
