"""The last step of prepare: check that every task completed, turn the task reports into `index.json` and
`lengths.npz`, and swap the finished set into `--out`.

The stage directory `.<out>.tmp-prepare` beside `--out` holds the shards the tasks wrote, their reports
(`tasks/`), datatrove's completion markers and logs (`.datatrove/`) and `run.json` (what the run was asked to do).
The merge reads the reports, raises the input errors only the whole run can see (an input file without a record,
an input with no usable record), writes the lengths and then, last and atomically, the index, removes the
bookkeeping, and renames the stage to `--out` (a previous set is renamed away first and deleted last).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

from swcm.atomic_write import write_bytes_atomic
from swcm.data import text as T
from swcm.data.prepare_steps import TASKS_DIR, Job, task_files
from swcm.data.shards import FORMAT, FORMAT_VERSION, INDEX_NAME, LENGTHS_NAME, DataError
from swcm.output_guard import mark_ours

log = logging.getLogger(__name__)

DATATROVE_DIR = ".datatrove"
RUN_FILE = "run.json"
# Above this share of <unk> tokens a language is reported with a warning: rare symbols (emoji, rare hanzi) stay
# well below 1% on the demo corpus, while a script the tokenizer does not cover (traditional Mongolian through a
# Cyrillic-only vocabulary) comes out at or near 100%.
UNK_WARN_SHARE = 0.05


@dataclass(frozen=True)
class Plan:
    """A whole run: the tasks' Job, how many tasks, where the set goes, and what index.json records."""
    job: Job
    out: str
    tasks: int
    tokenizer_info: dict
    args: tuple[str, ...]


def stage_dir(out: str | Path) -> Path:
    """Where a run builds the shard set for `out`: beside it, so the final rename stays on one filesystem."""
    out = Path(out)
    return out.with_name(f".{out.name}.tmp-prepare")


def old_dir(out: str | Path) -> Path:
    """Where a previous set of `out` waits while the new one is renamed in."""
    out = Path(out)
    return out.with_name(f".{out.name}.old-prepare")


def _task_reports(plan: Plan) -> list[tuple[dict, dict[str, np.ndarray]]]:
    stage = Path(plan.job.stage)
    missing = [r for r in range(plan.tasks) if not (stage / DATATROVE_DIR / "completions" / f"{r:05d}").is_file()]
    if missing:
        raise DataError(f"{stage}: {len(missing)} of {plan.tasks} tasks did not complete (ranks "
                        f"{', '.join(map(str, missing[:10]))}{', ...' if len(missing) > 10 else ''}); re-run the "
                        f"same command to run only those, see {stage / DATATROVE_DIR / 'logs'}")
    out = []
    for rank in range(plan.tasks):
        report_path, lengths_path = task_files(stage, rank)
        report = json.loads(report_path.read_text(encoding="utf-8"))
        with np.load(lengths_path, allow_pickle=False) as npz:
            lengths = {f"{stem}.tar": npz[stem] for stem in npz.files}
        out.append((report, lengths))
    return out


def _merge_inputs(plan: Plan, reports: list[dict]) -> list[dict]:
    """One entry per input with the tasks' counts summed; DataError for an input file that held no text, or an
    input with no usable record."""
    merged = []
    for k, inp in enumerate(plan.job.inputs):
        parts = [r["inputs"][k] for r in reports]
        records = parts[0]["records"]   # every task counts every record of every file: the counts agree
        skipped: dict[str, dict[str, int]] = {}
        for p in parts:
            for f, reasons in p["skipped"].items():
                for reason, n in reasons.items():
                    skipped.setdefault(f, {})[reason] = skipped.get(f, {}).get(reason, 0) + n
        for f, n in records.items():
            if n == 0 or skipped.get(f) == {T.EMPTY: n}:
                raise DataError(f"{f}: input file is empty")
        entry = {"input": inp.label, "kind": inp.kind, "files": list(records), "records": records,
                 "lines": sum(records.values()), "used_lines": sum(p["used_lines"] for p in parts),
                 "samples": sum(p["samples"] for p in parts), "split_lines": sum(p["split_lines"] for p in parts),
                 "streams": sorted({s for p in parts for s in p["streams"]}),
                 "skipped": {f: dict(sorted(r.items())) for f, r in sorted(skipped.items())}}
        if entry["samples"] == 0:
            raise DataError(f"{inp.label}: no usable text ({entry['lines']} lines; skipped: "
                            f"{entry['skipped'] or 'none'})")
        log.info("%s -> %s: %d records, %d samples (%d split), skipped %s", inp.label, ", ".join(entry["streams"]),
                 entry["lines"], entry["samples"], entry["split_lines"], entry["skipped"] or "none")
        merged.append(entry)
    return merged


def _unk_shares(reports: list[dict]) -> dict[str, dict]:
    """Per language: tokens, <unk> tokens and their share; a warning for a share above UNK_WARN_SHARE."""
    per_lang: dict[str, dict[str, int]] = {}
    for r in reports:
        for inp in r["inputs"]:
            for lang, c in inp["langs"].items():
                t = per_lang.setdefault(lang, {"tokens": 0, "unk": 0})
                t["tokens"] += c["tokens"]
                t["unk"] += c["unk"]
    out = {}
    for lang, c in sorted(per_lang.items()):
        share = c["unk"] / max(1, c["tokens"])
        out[lang] = {**c, "share": round(share, 6)}
        if share > UNK_WARN_SHARE:
            log.warning("%s: %.1f%% of the tokens are <unk> (%d of %d): the tokenizer does not cover this "
                        "language's script; the model would learn <unk> for it", lang, 100 * share, c["unk"],
                        c["tokens"])
    return out


def merge(plan: Plan) -> dict:
    """Write `lengths.npz` and `index.json` into the stage from the task reports and return the index (see the
    module docstring); DataError if a task did not complete or an input yielded nothing."""
    stage = Path(plan.job.stage)
    parts = _task_reports(plan)
    reports = [r for r, _ in parts]
    inputs = _merge_inputs(plan, reports)
    shards = {name: info for r in reports for name, info in r["shards"].items()}
    lengths = {name: arr for _, lens in parts for name, arr in lens.items()}
    streams: dict[str, dict] = {}
    for name in sorted(shards):
        info = shards[name]
        task, langs = info["stream"].split("/", 1)
        s = streams.setdefault(info["stream"], {"task": task, "langs": langs.split("-"), "shards": [],
                                                "samples": 0, "tokens": 0})
        s["shards"].append(name)
        s["samples"] += info["samples"]
        s["tokens"] += info["tokens"]
    streams = dict(sorted(streams.items()))
    buf = io.BytesIO()
    np.savez(buf, **{Path(name).stem: lengths[name] for name in sorted(shards)})
    write_bytes_atomic(stage / LENGTHS_NAME, buf.getvalue())
    totals: dict[str, dict] = {"mono": {}, "parallel": {}}
    for stream, info in streams.items():
        totals[info["task"]]["-".join(info["langs"])] = {"samples": info["samples"], "tokens": info["tokens"]}
    totals["all"] = {"samples": sum(s["samples"] for s in streams.values()),
                     "tokens": sum(s["tokens"] for s in streams.values())}
    index = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": plan.tokenizer_info, "max_len": plan.job.max_len,
        "samples_per_shard": plan.job.samples_per_shard, "tasks": plan.tasks,
        "lengths": {"file": LENGTHS_NAME, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()},
        "streams": streams, "shards": dict(sorted(shards.items())), "totals": totals,
        "unk": _unk_shares(reports), "inputs": inputs, "args": list(plan.args),
    }
    write_bytes_atomic(stage / INDEX_NAME, json.dumps(index, indent=1, ensure_ascii=False).encode())
    return index


def swap_in(stage: Path, out: Path) -> None:
    """Make the finished `stage` the shard set at `out`: bookkeeping removed, our marker written, a previous set
    renamed away, the stage renamed in, the previous set deleted."""
    for name in (TASKS_DIR, DATATROVE_DIR):
        shutil.rmtree(stage / name, ignore_errors=True)
    (stage / RUN_FILE).unlink(missing_ok=True)
    mark_ours(stage, "shards")
    old = old_dir(out)
    if out.exists():
        out.rename(old)
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def recover_swap(out: Path) -> None:
    """Finish what a run killed during `swap_in` left: the previous set back at `out` if the new one had not been
    renamed in yet, else deleted."""
    old = old_dir(out)
    if old.exists():
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(out)


def merge_and_swap(plan: Plan) -> dict:
    """`merge`, then `swap_in` to `plan.out`; returns the index."""
    index = merge(plan)
    swap_in(Path(plan.job.stage), Path(plan.out))
    log.info("wrote %d shards, %d samples, %d tokens to %s", len(index["shards"]), index["totals"]["all"]["samples"],
             index["totals"]["all"]["tokens"], plan.out)
    return index


class MergeShardSet(PipelineStep):
    """`merge_and_swap` as a datatrove step: the one-task job that follows the tasks' job array on SLURM."""
    name = "merge shard set"
    type = "swcm merge"

    def __init__(self, plan: Plan):
        super().__init__()
        self.plan = plan

    def run(self, data, rank: int = 0, world_size: int = 1) -> None:
        """Merge and swap (a plain function: datatrove calls it and it runs to the end)."""
        merge_and_swap(self.plan)
