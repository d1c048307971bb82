"""Where a training loop's time goes, from py-spy's collapsed stacks (`py-spy record --format raw --idle`): each
sample inside the loop (the main thread's) is put in the first category whose pattern its stack matches, so
communication waits inside the backward count as communication, not backward."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

# The steps' root frame on each side: samples outside it (start-up, set-up inside HF's _inner_training_loop, the
# end of the run) are counted apart.
LOOP_ROOTS = {"swcm": "._loop (swcm/training/trainer.py", "hf": "._run_epoch (transformers/trainer.py"}

# (category, pattern on the whole stack), first match wins; order = precedence.
CATEGORIES = [
    ("communication", re.compile(r"all_reduce|reduce_scatter|all_gather|allgather|allreduce|broadcast|barrier|"
                                 r"inference_all_reduce|gather_object|_gather|/comm/|distributed_c10d")),
    ("checkpoint", re.compile(r"save_checkpoint|checkpointing\.py")),
    ("optimizer", re.compile(r"_fused_adamw|adamw|optimizer.*step|step \(torch/optim|stage_1_and_2\.py.*step|"
                             r"clip_grad|get_grad_norm|_take_model_step|step \(deepspeed/runtime/engine")),
    ("backward", re.compile(r"backward")),
    ("forward", re.compile(r"forward")),
    ("data", re.compile(r"collate|Collator|tokeniz|__next__|_next_data|fetch|StepBatches|ExampleStream|"
                        r"get_batch_samples|_to_device|prepare_inputs")),
    ("logging", re.compile(r"log_step|_maybe_log|\blog\b|run_log|tensorboard|callback|on_step_end|\.item|tolist")),
]


def categorise(raw: Path, side: str) -> tuple[Counter, int, int]:
    """(samples per category inside the loop, samples inside the loop, all samples) of a raw py-spy file (every
    thread's samples; only the main thread runs the loop)."""
    root = LOOP_ROOTS[side]
    cats, inside, total = Counter(), 0, 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        if root not in stack:
            continue
        inside += int(n)
        loop_part = stack[stack.index(root):]
        cats[next((name for name, pat in CATEGORIES if pat.search(loop_part)), "other")] += int(n)
    return cats, inside, total


def table(profiles: dict[str, Path]) -> str:
    """Markdown: per side, the share of the loop's main-thread samples in each category."""
    counted = {side: categorise(path, side) for side, path in profiles.items()}
    names = [name for name, _ in CATEGORIES] + ["other"]
    sides = list(profiles)
    lines = ["| share of the training loop | " + " | ".join(sides) + " |", "|---|" + "---:|" * len(sides)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * counted[s][0][name] / max(counted[s][1], 1):.1f}%" for s in sides) + " |")
    lines.append("| samples in loop / all threads' | " + " | ".join(
        f"{counted[s][1]} / {counted[s][2]}" for s in sides) + " |")
    return "\n".join(lines)
