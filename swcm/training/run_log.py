"""What a run writes for people: `RUN/metrics.jsonl` (a line per step), TensorBoard (`RUN/tensorboard`) and a
progress bar. Only rank 0 holds one; a resumed run first drops what the crashed run logged after its checkpoint."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from swcm.atomic_write import write_atomic


class RunLog:
    """Appends step rows to metrics.jsonl, scalars to TensorBoard, and drives a tqdm bar from `step` to `total`."""

    def __init__(self, out: Path, step: int, total: int, desc: str):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.metrics = out / "metrics.jsonl"
        kept = []
        if self.metrics.exists():
            kept = [ln for ln in self.metrics.read_text().splitlines() if json.loads(ln)["step"] <= step]
        write_atomic(self.metrics, "".join(ln + "\n" for ln in kept))
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1)
        # In a log file (no terminal) a bar redrawn every step would bury the log: redraw every 30 s there.
        self.bar = tqdm(total=total, initial=step, desc=desc, dynamic_ncols=True,
                        mininterval=0.5 if sys.stderr.isatty() else 30)

    def step_row(self, row: dict) -> None:
        """One optimizer step: its JSONL line (with `time`, the wall clock as it is written, so that a benchmark can
        time steps from outside), TensorBoard `train/loss`, `train/lr`, `train/grad_norm`, the bar."""
        step = row["step"]
        with open(self.metrics, "a") as f:
            f.write(json.dumps({**row, "time": time.time()}) + "\n")
        for key in ("loss", "lr", "grad_norm"):
            self.writer.add_scalar(f"train/{key}", row[key], step)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", refresh=False)
        self.bar.update(1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """TensorBoard scalars named as given (e.g. `perf/tokens_per_s`), flushed."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.bar.close()
        self.writer.close()


class SampleLog:
    """`RUN/samples/rank{R}.jsonl`: per step, the ids of the samples this rank trained on (fillers left out), for
    auditing what the data pipeline fed. A resumed run first drops the lines after its checkpoint."""

    def __init__(self, out: Path, rank: int, step: int):
        self.path = out / "samples" / f"rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if json.loads(ln)["step"] <= step]
        write_atomic(self.path, "".join(ln + "\n" for ln in kept))

    def add(self, step: int, batches: list[dict]) -> None:
        ids = [i for b in batches if not b.get("is_padding") for i in b["sample_id"]]
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "ids": ids}) + "\n")
