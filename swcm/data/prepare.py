"""Raw text -> tokenised webdataset shards + lengths.npz + index.json (the work behind launch/prepare_data.py), as
a datatrove pipeline.

Inputs: monolingual text per language, aligned parallel files (line i of one is the translation of line i of the
other) and parallel records ({"src", "tgt", "src_lang", "tgt_lang"}); each PATH a file, a glob, a directory or a
saved `datasets` dataset, in plain text, JSONL or Parquet, compressed or not (`sources`). The work is split into
datatrove tasks (`prepare_steps`: read, clean, tokenise, split, write shards), run by a local executor over worker
processes or as a SLURM job array, and merged into one shard set (`prepare_merge`). Memory holds one batch of
records and one open shard per stream, never an input.

The set is built in `.<out>.tmp-prepare` beside `--out` and moved into place only when complete. An error in the
input or an interrupt (SIGINT, SIGTERM) removes it and leaves `--out` as it was; a run that was killed outright
(SIGKILL, a lost node) leaves it, and the same command run again redoes only the tasks that had not completed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

from swcm.data import prepare_exec, sources
from swcm.data.prepare_merge import (DATATROVE_DIR, RUN_FILE, MergeShardSet, Plan, merge_and_swap,
                                     recover_swap, stage_dir)
from swcm.data.prepare_steps import SPECIAL_TOKENS_PER_SAMPLE, Input, Job, ReadRecords, Tokenise, WriteShards
from swcm.data.shards import FORMAT_VERSION, DataError
from swcm.output_guard import OutputError, check_output_dir

log = logging.getLogger(__name__)


def tokenizer_info(tokenizer, tokenizer_dir: str | Path, langs: set[str]) -> dict:
    """The index's record of the tokenizer; DataError if a language has no `<lang>` tag in it."""
    from swcm.tokenization import lang_tag, tokenizer_fingerprint

    vocab = tokenizer.get_vocab()
    missing = sorted(lang for lang in langs if lang_tag(lang) not in vocab)
    if missing:
        raise DataError(f"{tokenizer_dir}: tokenizer has no language tag for {', '.join(map(lang_tag, missing))}; "
                        f"use the model's tokenizer (convert_checkpoint.py from-encoder adds the tags)")
    return {"fingerprint": tokenizer_fingerprint(tokenizer), "path": str(tokenizer_dir), "vocab_size": len(tokenizer),
            "lang_tags": {lang: vocab[lang_tag(lang)] for lang in sorted(langs)},
            "special_ids": {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
                            "pad": tokenizer.pad_token_id, "unk": tokenizer.unk_token_id,
                            "mask": tokenizer.mask_token_id}}


def _load_tokenizer(tokenizer_dir: str | Path):
    """The tokenizer in `tokenizer_dir`; DataError if the directory is missing or holds no tokenizer."""
    from swcm.tokenization import load_tokenizer

    if not Path(tokenizer_dir).is_dir():
        raise DataError(f"--tokenizer {tokenizer_dir}: directory not found (expected the model's tokenizer)")
    try:
        return load_tokenizer(tokenizer_dir)
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"--tokenizer {tokenizer_dir}: cannot load a tokenizer from it ({e})") from None


def inputs_from(mono=(), parallel=(), parallel_jsonl=()) -> tuple[Input, ...]:
    """The run's inputs in a fixed order (mono, aligned pairs, parallel records; each as given): `mono` holds
    (lang, PATH), `parallel` (src_lang, tgt_lang, SRC, TGT), `parallel_jsonl` PATHs."""
    return (tuple(Input("mono", (str(p),), (lang,)) for lang, p in mono)
            + tuple(Input("aligned", (str(s), str(t)), (sl, tl)) for sl, tl, s, t in parallel)
            + tuple(Input("pairs", (str(p),)) for p in parallel_jsonl))


def _check_inputs(inputs: tuple[Input, ...]) -> dict[str, list[sources.Source]]:
    """Every PATH resolved to its files (DataError for one missing, empty or matching nothing). The same file may
    not be read twice as text or records, whatever path (symlink, `..`, a directory holding it) names it; the same
    target file may serve several aligned pairs (zh beside bo, kk, ...), the same pair may not come twice."""
    resolved = {p: sources.resolve(p) for inp in inputs for p in inp.paths}
    seen: dict[object, str] = {}
    for inp in inputs:
        keys = ([(os.path.realpath(inp.paths[0]), os.path.realpath(inp.paths[1]))] if inp.kind == "aligned"
                else [os.path.realpath(s.path) for s in resolved[inp.paths[0]]])
        for key, name in zip(keys, [inp.label] if inp.kind == "aligned" else [s.path for s in resolved[inp.paths[0]]]):
            if key in seen:
                same = "" if seen[key] == name else f" (the same file as {seen[key]})"
                raise DataError(f"input given more than once: {name}{same}; its samples would be duplicated")
            seen[key] = name
    return resolved


def _pair_langs(inputs: tuple[Input, ...], resolved: dict[str, list[sources.Source]]) -> set[str]:
    """The languages of the parallel records, read once before any task starts so that a missing language tag or a
    record whose field is not a string stops the run before any work."""
    langs: set[str] = set()
    for inp in inputs:
        if inp.kind == "pairs":
            for src in resolved[inp.paths[0]]:
                for _, rec, _ in sources.pair_records(src, lambda n: True):
                    if rec is not None:
                        langs.update((rec["src_lang"], rec["tgt_lang"]))
    return langs


def _fingerprint_files(resolved: dict[str, list[sources.Source]]) -> list:
    """What identifies the input files for a resumed run: path, size and modification time of each."""
    out = []
    for path, srcs in sorted(resolved.items()):
        for s in srcs:
            st = os.stat(s.path)
            out.append([s.path, st.st_size, st.st_mtime_ns])
    return out


def plan_run(tokenizer_dir: str | Path, out_dir: str | Path, inputs: tuple[Input, ...], *, max_len: int = 256,
             samples_per_shard: int = 2_000, text_field: str = "text", tasks: int = 1, overwrite: bool = False,
             args: list[str] | None = None) -> tuple[Plan, dict]:
    """Check everything that can be checked before any work and return the run's Plan and its identity (what
    `run.json` records: a stage with the same identity is resumed). DataError names the input, flag or file."""
    if not inputs:
        raise DataError("no inputs: give at least one --mono, --parallel or --parallel-jsonl")
    if samples_per_shard < 1:
        raise DataError(f"--samples-per-shard {samples_per_shard}: must be at least 1")
    if tasks < 1:
        raise DataError(f"--tasks {tasks}: must be at least 1")
    if max_len <= SPECIAL_TOKENS_PER_SAMPLE:
        raise DataError(f"--max-len {max_len}: must exceed the {SPECIAL_TOKENS_PER_SAMPLE} special tokens")
    resolved = _check_inputs(inputs)
    out = Path(out_dir)
    try:
        check_output_dir(out, [*resolved, *(s.path for srcs in resolved.values() for s in srcs), tokenizer_dir],
                         overwrite=overwrite)
    except OutputError as e:
        raise DataError(str(e)) from None
    tokenizer = _load_tokenizer(tokenizer_dir)
    langs = {lang for inp in inputs for lang in inp.langs} | _pair_langs(inputs, resolved)
    info = tokenizer_info(tokenizer, tokenizer_dir, langs)   # a missing language tag fails before any work
    job = Job(inputs=inputs, tokenizer_dir=str(tokenizer_dir), stage=str(stage_dir(out)), max_len=max_len,
              samples_per_shard=samples_per_shard, text_field=text_field, fingerprint=info["fingerprint"])
    identity = {"format_version": FORMAT_VERSION, "inputs": [[i.kind, list(i.paths), list(i.langs)] for i in inputs],
                "files": _fingerprint_files(resolved), "tokenizer": info["fingerprint"], "max_len": max_len,
                "samples_per_shard": samples_per_shard, "text_field": text_field, "tasks": tasks}
    return Plan(job=job, out=str(out), tasks=tasks, tokenizer_info=info, args=tuple(args or ())), identity


def pipeline(job: Job) -> list:
    """The steps of one task."""
    return [ReadRecords(job), Tokenise(job), WriteShards(job)]


def _lock(stage: Path, out: Path) -> int:
    """An exclusive lock on the stage directory (released by the kernel when this process ends, however it ends);
    DataError if another run holds it."""
    fd = os.open(stage, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataError(f"--out {out}: another prepare_data.py is writing this shard set now ({stage} is "
                        f"locked)") from None
    return fd


def open_stage(plan: Plan, identity: dict) -> tuple[Path, int, int]:
    """The stage directory for `plan`, locked: created (with any missing parents) or, when an earlier run with
    the same identity left it, kept to resume; a stage an earlier run with other inputs or settings left is
    removed first. Returns it, the lock's file descriptor and the number of tasks already complete."""
    out = Path(plan.out)
    recover_swap(out)
    stage = Path(plan.job.stage)
    run_file = stage / RUN_FILE
    fd = None
    if stage.exists():
        fd = _lock(stage, out)
        try:
            same = json.loads(run_file.read_text(encoding="utf-8")) == identity
        except (OSError, ValueError):
            same = False
        if not same:
            log.info("removing %s, left by an earlier run with other inputs or settings", stage)
            shutil.rmtree(stage)
            os.close(fd)
            fd = None
    if fd is None:
        stage.mkdir(parents=True)
        fd = _lock(stage, out)
        run_file.write_text(json.dumps(identity), encoding="utf-8")
    done = stage / DATATROVE_DIR / "completions"
    return stage, fd, len(list(done.iterdir())) if done.is_dir() else 0


@contextlib.contextmanager
def _staged(plan: Plan, identity: dict) -> Iterator[Path]:
    """The stage, locked for this run. If the block raises a DataError or is interrupted, the stage and the parent
    directories created for it are removed; after any other failure the stage stays for a resumed run."""
    out = Path(plan.out)
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    stage, fd, done = open_stage(plan, identity)
    try:
        if done:
            log.info("resuming: %d of %d tasks completed by an earlier run", done, plan.tasks)
        yield stage
    except (DataError, KeyboardInterrupt):
        shutil.rmtree(stage, ignore_errors=True)
        for d in created:   # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    except BaseException:
        log.error("the tasks completed so far are kept in %s: run the same command again to resume", stage)
        raise
    finally:
        os.close(fd)


def prepare(tokenizer_dir: str | Path, out_dir: str | Path, *, mono: list[tuple[str, str]] = (),
            parallel: list[tuple[str, str, str, str]] = (), parallel_jsonl: list[str] = (), max_len: int = 256,
            samples_per_shard: int = 2_000, overwrite: bool = False, args: list[str] | None = None,
            show_progress: bool = True, text_field: str = "text", tasks: int = 1, workers: int = 1,
            executor: str = "local") -> dict:
    """Build a shard set in `out_dir` with `tasks` datatrove tasks over `workers` local processes (1: in this
    process), or on a Ray cluster (`executor="ray"`), and return its index.

    `mono`: (lang, PATH) pairs; `parallel`: (src_lang, tgt_lang, SRC, TGT); `parallel_jsonl`: PATHs of records.
    Raises DataError for an unusable input (missing, empty or unreadable file, a record without `text_field`, no
    usable line, misaligned pair, missing language tag, a field that is not a string), an unusable tokenizer
    directory, or an `out_dir` that may not be written (see `output_guard`). Whatever fails, `out_dir` is left as
    it was. The same inputs and `tasks` give a byte-identical shard set; another `tasks`, the same samples.
    """
    plan, identity = plan_run(tokenizer_dir, out_dir, inputs_from(mono, parallel, parallel_jsonl), max_len=max_len,
                              samples_per_shard=samples_per_shard, text_field=text_field, tasks=tasks,
                              overwrite=overwrite, args=args)
    level = "INFO" if show_progress else "WARNING"
    with _staged(plan, identity) as stage:
        workers = max(1, min(workers, tasks))
        if executor == "ray":
            runner = prepare_exec.ray(pipeline(plan.job), tasks, workers, stage / DATATROVE_DIR)
        else:
            runner = prepare_exec.local(pipeline(plan.job), tasks, workers, stage / DATATROVE_DIR)
        todo = runner.get_incomplete_ranks()
        log.info("running %d of %d tasks (ranks %s) over %d %s", len(todo), tasks, ",".join(map(str, todo)) or "none",
                 workers, "Ray workers" if executor == "ray" else "processes")
        prepare_exec.set_coordinator_logging(level)
        runner.run()
        return merge_and_swap(plan)


def submit_slurm(tokenizer_dir: str | Path, out_dir: str | Path, *, inputs: tuple[Input, ...], tasks: int,
                 slurm: dict, logs: str | Path | None = None, max_len: int = 256, samples_per_shard: int = 2_000,
                 overwrite: bool = False, args: list[str] | None = None, text_field: str = "text") -> dict:
    """Check the run as `prepare` does, then submit it to SLURM: a job array of `tasks` (one datatrove task per
    index) and a merge job that runs when all have succeeded and swaps the set into `out_dir`. Submitting the same
    command again resubmits only the tasks that have not completed. `slurm`: see `prepare_exec.slurm`; `logs`
    (default `<out>.prepare-logs` beside it): the job scripts' and tasks' logs. Returns the job ids and paths."""
    plan, identity = plan_run(tokenizer_dir, out_dir, inputs, max_len=max_len, samples_per_shard=samples_per_shard,
                              text_field=text_field, tasks=tasks, overwrite=overwrite, args=args)
    stage, fd, done = open_stage(plan, identity)
    os.close(fd)   # the tasks run elsewhere, later: nothing here to hold the stage for
    out = Path(plan.out)
    logs = Path(logs) if logs else out.with_name(f"{out.name}.prepare-logs")
    array, merge = prepare_exec.slurm(pipeline(plan.job), [MergeShardSet(plan)], tasks, stage / DATATROVE_DIR,
                                      logs, slurm)
    logs_existed = logs.exists()
    try:
        try:
            merge.run()   # submits the array (its tasks not yet complete), then the merge job depending on it
        except FileNotFoundError as e:
            if e.filename != "sbatch":
                raise
            raise DataError("--executor slurm: sbatch not found; run this on a SLURM login node") from None
        except subprocess.CalledProcessError as e:
            raise DataError(f"--executor slurm: sbatch failed with status {e.returncode}") from None
    except (DataError, KeyboardInterrupt):
        if not done:   # nothing of an earlier submission to keep
            shutil.rmtree(stage, ignore_errors=True)
        if not logs_existed:
            shutil.rmtree(logs, ignore_errors=True)
        raise
    return {"array_job": array.job_id, "merge_job": merge.job_id, "tasks_done_before": done, "stage": str(stage),
            "logs": str(logs), "launch_script": str(stage / DATATROVE_DIR / "launch_script.slurm")}
