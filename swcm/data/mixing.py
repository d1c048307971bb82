"""How often each stream is read in an epoch: temperature sampling over languages, DAE vs MT by ratio.

A stream is `mono/<lang>` (denoising) or `parallel/<a>-<b>` (translation). Within a task, stream s is drawn
with probability p(s) ∝ n_s^alpha (n_s = its samples); across tasks, MT streams get `mt_ratio` of the draws.
An epoch ends when the stream with the largest n_s / w_s has been read exactly once, so with alpha = 1 and
mt_ratio equal to the MT share of the samples every stream is read exactly once; any other stream is read
round(L * w_s) >= n_s times, i.e. it repeats (reshuffled) within the epoch.
"""

from __future__ import annotations

MONO, PARALLEL = "mono", "parallel"


def stream_weights(sizes: dict[str, int], tasks: dict[str, str], alpha: float, mt_ratio: float) -> dict[str, float]:
    """Probability of drawing each stream: p(task) * n_s^alpha / sum over the task's streams of n^alpha.

    A task without streams passes its share to the other; `mt_ratio` outside [0, 1] or alpha < 0 is a ValueError.
    """
    if not 0.0 <= mt_ratio <= 1.0:
        raise ValueError(f"data.mt_ratio {mt_ratio}: expected a fraction in [0, 1]")
    if alpha < 0:
        raise ValueError(f"data.alpha {alpha}: expected >= 0")
    present = {t for t in tasks.values()}
    p_task = {PARALLEL: mt_ratio, MONO: 1.0 - mt_ratio}
    if present == {MONO}:
        p_task = {MONO: 1.0, PARALLEL: 0.0}
    elif present == {PARALLEL}:
        p_task = {MONO: 0.0, PARALLEL: 1.0}
    weights = {}
    for task in (MONO, PARALLEL):
        members = [s for s in sizes if tasks[s] == task]
        z = sum(sizes[s] ** alpha for s in members)
        for s in members:
            weights[s] = p_task[task] * sizes[s] ** alpha / z
    return weights


def epoch_reads(sizes: dict[str, int], weights: dict[str, float]) -> dict[str, int]:
    """Samples read from each stream in one epoch: L * w_s with L = max_s n_s / w_s, never fewer than n_s for
    a stream with w_s > 0 (so nothing is left unread), and 0 for a stream with w_s = 0."""
    active = {s: w for s, w in weights.items() if w > 0 and sizes[s] > 0}
    if not active:
        raise ValueError("no stream has a positive sampling weight (check data.mt_ratio against the shard set)")
    length = max(sizes[s] / w for s, w in active.items())
    return {s: (max(sizes[s], round(length * weights[s])) if s in active else 0) for s in sizes}
