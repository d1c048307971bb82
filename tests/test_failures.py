"""Fault injection on the entry points: every failure ends at once, with one `error:` line, no hang, no orphan
process and nothing lost.

- loader workers: a reader that goes away (`inspect_data.py | head -1`), a process that ends holding a stream
  iterator (normally or by an exception), a process killed with SIGKILL: no process left behind within 10 s;
  a corrupt shard read by a worker is one DataError naming the shard;
- prepare_data.py --overwrite with bad input (found before or during the work) or Ctrl-C: the previous shard
  set byte-identical, no debris; bad arguments: one error line, nothing written;
- generate.py and convert_checkpoint.py to-hf on bad arguments and damaged checkpoints: one error line.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers_run import build_zero2_run

from swcm.data.config import DataConfig
from swcm.data.prepare import prepare
from swcm.data.shards import DataError, load_index
from swcm.data.stream import PretrainStream

pytestmark = pytest.mark.slow   # many subprocesses of the entry points

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
DEMO = ROOT / "data" / "demo"
GONE_WITHIN_S = 10
sys.path.insert(0, str(ROOT / "launch"))
import convert_checkpoint  # noqa: E402
import generate  # noqa: E402


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", **extra)
    env.pop("TRITON_INTERPRET", None)
    return env


def _run(*cmd, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout, **kw)


def _one_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert exit status 2, no traceback and exactly one `error:` line on stderr that holds every needle."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def _running(pids) -> list[int]:
    """The pids that still run (a zombie has ended: only its exit status is left for its parent to collect)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_gone(pids, timeout=GONE_WITHIN_S) -> list[int]:
    """Poll until none of `pids` runs or `timeout` passes; return those still running."""
    deadline = time.monotonic() + timeout
    while _running(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _running(pids)


def _group(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return out


def _ignored_signals(pid: int) -> set[int]:
    """The signals process `pid` ignores (the SigIgn mask of /proc/PID/status, Linux)."""
    mask = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("SigIgn:")).split()[1], 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def _snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root` ('<dir>' for directories)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(root.rglob("*"))}


# -- fixtures -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("texts")
    for lang, n in (("zh", 160), ("kk", 120)):
        lines = (DEMO / "mono" / f"{lang}.txt").read_bytes().splitlines(keepends=True)[:n]
        (d / f"{lang}.txt").write_bytes(b"".join(lines))
    return d


@pytest.fixture(scope="module")
def shard_set(tokenizer, texts, tmp_path_factory) -> Path:
    """7 shards of 40 samples (zh, kk): at least one per (rank, worker) slot of 1 rank x 2 workers."""
    out = tmp_path_factory.mktemp("shards") / "train"
    prepare(tokenizer.saved_dir, out, mono=[("zh", str(texts / "zh.txt")), ("kk", str(texts / "kk.txt"))],
            samples_per_shard=40, show_progress=False)
    return out


def _inspect_cmd(shard_dir, tokenizer, *extra) -> list[str]:
    return [PY, str(ROOT / "launch/inspect_data.py"), str(shard_dir), "--tokenizer", str(tokenizer.saved_dir),
            "--num-workers", "2", "--set", "data.max_tokens=512", *extra]


# -- loader workers -----------------------------------------------------------------------------------------------

def test_inspect_into_head_returns_and_leaves_no_process(shard_set, tokenizer):
    """`inspect_data.py | head -1` on an endless train stream, so that only the closed pipe can end it: the
    pipeline ends within 10 s of its first line, inspect_data.py quietly with status 141 (as SIGPIPE ends
    `yes | head`), and no process of its process group (the workers included) outlives it."""
    cmd = " ".join(_inspect_cmd(shard_set, tokenizer, "--batches", "1000000"))
    proc = subprocess.Popen(["bash", "-c", f'{cmd} | head -1; echo "inspect status ${{PIPESTATUS[0]}}" >&2'],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        first = proc.stdout.readline()   # start-up (imports, tokenizer, workers) is not what is measured
        head_done = time.monotonic()
        proc.wait(timeout=GONE_WITHIN_S)
        assert time.monotonic() - head_done < GONE_WITHIN_S
        err = proc.stderr.read()
        assert json.loads(first)["epoch"] == 0 and proc.stdout.read() == ""
        assert "inspect status 141" in err and "Traceback" not in err and "BrokenPipe" not in err, err
        assert _wait_gone(_group(proc.pid)) == [], "processes of the pipeline outlived it"
    finally:
        if _running(_group(proc.pid)):
            os.killpg(proc.pid, signal.SIGKILL)


HOLDER = r"""
import sys, time
import psutil
from swcm.data.config import DataConfig
from swcm.data.stream import PretrainStream
from swcm.tokenization import load_tokenizer
{patch}
stream = PretrainStream(DataConfig(shards=sys.argv[1], num_workers=2, max_tokens=512), load_tokenizer(sys.argv[2]),
                        rank=0, world_size=1)
batches = iter(stream)   # a global: alive until the interpreter's very end
next(batches)
print(" ".join(str(c.pid) for c in psutil.Process().children()), flush=True)
if sys.argv[3] == "raise":
    raise RuntimeError("the consumer failed")
if sys.argv[3] == "sleep":
    time.sleep(600)
"""


def _holder(shard_set, tokenizer, mode: str, patch: str = "") -> tuple[subprocess.Popen, list[int]]:
    """A Python process holding a stream iterator with 2 workers; returns it and its workers' pids."""
    proc = subprocess.Popen([PY, "-c", HOLDER.format(patch=patch), str(shard_set), str(tokenizer.saved_dir), mode],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2, proc.stderr.read() if proc.poll() is not None else "no workers"
    return proc, workers


@pytest.mark.parametrize("mode", ["end", "raise"])
def test_process_holding_a_stream_iterator_exits(shard_set, tokenizer, mode):
    proc, workers = _holder(shard_set, tokenizer, mode)
    try:
        proc.wait(timeout=GONE_WITHIN_S)
    finally:
        proc.kill()
    err = proc.stderr.read()
    if mode == "raise":
        assert proc.returncode == 1 and "RuntimeError: the consumer failed" in err
    else:
        assert proc.returncode == 0, err
    assert "DataLoader worker" not in err
    assert _wait_gone(workers) == []


@pytest.mark.parametrize("guard", ["both", "watchdog_only"])
def test_sigkill_of_the_parent_ends_its_workers(shard_set, tokenizer, guard):
    """SIGKILL leaves no cleanup to the parent. `watchdog_only` turns the parent-death signal into a no-op
    prctl (option 0): the thread that watches the parent pid ends the workers by itself (other systems)."""
    patch = "import swcm.data.stream as S; S._PR_SET_PDEATHSIG = 0" if guard == "watchdog_only" else ""
    proc, workers = _holder(shard_set, tokenizer, "sleep", patch)
    assert {p.pid for p in psutil.Process(proc.pid).children()} == set(workers)
    for pid in workers:   # a scheduler's SIGTERM to the process group must leave them to the trainer
        assert {signal.SIGTERM, signal.SIGINT} <= _ignored_signals(pid)
    proc.kill()
    proc.wait()
    try:
        assert _wait_gone(workers) == []
    finally:
        for pid in _running(workers):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def corrupt_set(shard_set, tmp_path) -> tuple[Path, str]:
    """A copy of the shard set with one byte of one shard flipped (same size: only its sha256 tells)."""
    bad = tmp_path / "bad"
    shutil.copytree(shard_set, bad)
    victim = sorted(load_index(bad)["shards"])[1]
    blob = bytearray((bad / victim).read_bytes())
    blob[700] ^= 0xFF
    (bad / victim).write_bytes(bytes(blob))
    return bad, victim


def test_corrupt_shard_in_a_worker_is_one_data_error(corrupt_set, tokenizer):
    bad, victim = corrupt_set
    stream = PretrainStream(DataConfig(shards=str(bad), num_workers=2, max_tokens=512), tokenizer, rank=0,
                            world_size=1)
    with pytest.raises(DataError) as e:
        for _ in stream.epoch_batches():
            pass
    message = str(e.value)
    assert message.startswith(f"shard {bad / victim}: sha256") and "\n" not in message, message


def test_inspect_on_a_corrupt_shard_prints_one_error_line(corrupt_set, tokenizer):
    bad, victim = corrupt_set
    proc = _run(*_inspect_cmd(bad, tokenizer, "--epochs", "1"))
    _one_error(proc, victim, "sha256")
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


# -- prepare_data.py: --overwrite keeps the old set on failure ------------------------------------------------------

@pytest.fixture(scope="module")
def good_set_template(tokenizer, texts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("template") / "good"
    prepare(tokenizer.saved_dir, out, mono=[("zh", str(texts / "zh.txt"))], samples_per_shard=50,
            show_progress=False)
    return out


@pytest.fixture
def good_set(good_set_template, tmp_path) -> Path:
    out = tmp_path / "sets" / "good"
    shutil.copytree(good_set_template, out)
    return out


def _prepare_cmd(tokenizer, out, *inputs, overwrite=True) -> list:
    return [PY, ROOT / "launch/prepare_data.py", "--tokenizer", tokenizer.saved_dir, *inputs, "--out", out,
            "--quiet", *(["--overwrite"] if overwrite else [])]


def _bad_inputs(case: str, texts: Path, tmp: Path) -> tuple[list[str], str]:
    """(prepare_data.py input flags, what the error must name) for one kind of bad input."""
    zh = str(texts / "zh.txt")
    if case == "empty_file":
        (tmp / "empty.txt").write_bytes(b"")
        return ["--mono", f"zh={zh}", "--mono", f"kk={tmp / 'empty.txt'}"], f"{tmp / 'empty.txt'}: input file is empty"
    if case == "unknown_language":
        return ["--mono", f"xx={zh}"], "<xx>"
    if case == "whitespace_file":   # found only while reading it, after zh's shards are written
        (tmp / "blank.txt").write_bytes(b"  \n\n \n")
        return ["--mono", f"zh={zh}", "--mono", f"kk={tmp / 'blank.txt'}"], f"{tmp / 'blank.txt'}: input file is empty"
    if case == "misaligned":       # found after the mono input is written
        (tmp / "a.kk").write_text("Бір\nЕкі\n", encoding="utf-8")
        (tmp / "a.zh").write_text("一\n", encoding="utf-8")
        return ["--mono", f"zh={zh}", "--parallel", f"kk-zh={tmp / 'a.kk'},{tmp / 'a.zh'}"], "misaligned"
    assert case == "jsonl_number_side"
    rows = [{"src": "Сәлем", "tgt": "你好", "src_lang": "kk", "tgt_lang": "zh"},
            {"src": 42, "tgt": "你好", "src_lang": "kk", "tgt_lang": "zh"}]
    (tmp / "p.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return ["--mono", f"zh={zh}", "--parallel-jsonl", str(tmp / "p.jsonl")], f"{tmp / 'p.jsonl'}:2: field 'src' is 42"


@pytest.mark.parametrize("case", ["empty_file", "unknown_language", "whitespace_file", "misaligned",
                                  "jsonl_number_side"])
def test_failed_overwrite_keeps_the_previous_set(tokenizer, texts, good_set, tmp_path, case):
    before, siblings = _snapshot(good_set), sorted(good_set.parent.iterdir())
    inputs, expect = _bad_inputs(case, texts, tmp_path)
    _one_error(_run(*_prepare_cmd(tokenizer, good_set, *inputs)), expect)
    assert _snapshot(good_set) == before
    assert sorted(good_set.parent.iterdir()) == siblings, "debris beside --out"


def test_failed_first_run_leaves_no_out(tokenizer, texts, tmp_path):
    """Failing after the first input's shards are written, in directories this run had to create."""
    inputs, expect = _bad_inputs("misaligned", texts, tmp_path)
    out = tmp_path / "new" / "deeper" / "train"
    _one_error(_run(*_prepare_cmd(tokenizer, out, *inputs, overwrite=False)), expect)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupted_overwrite_keeps_the_previous_set(tokenizer, good_set, tmp_path, signum, status):
    """Ctrl-C or a scheduler's SIGTERM to the whole process group (the coordinator and its worker processes) while
    the new set is being written (its temporary directory exists)."""
    before, siblings = _snapshot(good_set), sorted(good_set.parent.iterdir())
    big = tmp_path / "bo.txt"   # the demo's Tibetan 6 times (11 MB): seconds of tokenising, on a fast machine too
    big.write_bytes((DEMO / "mono" / "bo.txt").read_bytes() * 6)
    # SIGINT at its default in the child, as a foreground program in a terminal has it (a job started in the
    # background can inherit it ignored, which Python keeps).
    proc = subprocess.Popen([str(c) for c in _prepare_cmd(tokenizer, good_set, "--mono", f"bo={big}")], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL), os.setpgrp()))
    deadline = time.monotonic() + 60
    while not list(good_set.parent.glob(".good.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "prepare_data.py finished before it could be interrupted"
    time.sleep(1)   # into the tasks' work: the worker processes have started
    group = _group(proc.pid)
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status and "Traceback" not in err and "error: interrupted" in err, err
    assert _snapshot(good_set) == before
    assert sorted(good_set.parent.iterdir()) == siblings
    assert not _wait_gone(group), "processes of the interrupted run left behind"


def test_overwrite_replaces_the_set_without_debris(tokenizer, texts, good_set):
    siblings = sorted(good_set.parent.iterdir())
    proc = _run(*_prepare_cmd(tokenizer, good_set, "--mono", f"kk={texts / 'kk.txt'}"))
    assert proc.returncode == 0, proc.stderr
    assert set(load_index(good_set)["totals"]["mono"]) == {"kk"}
    assert sorted(good_set.parent.iterdir()) == siblings


@pytest.mark.parametrize("case", ["out_is_a_file", "missing_tokenizer"])
def test_prepare_argument_errors_write_nothing(tokenizer, texts, tmp_path, case):
    out = tmp_path / "out"
    tok = tokenizer.saved_dir
    if case == "out_is_a_file":
        out.write_text("mine")
        expect = [f"--out {out}", "is not a directory"]
    else:
        tok = tmp_path / "no_tokenizer"
        expect = [f"--tokenizer {tok}", "not found"]
    before = sorted(tmp_path.iterdir())
    proc = _run(PY, ROOT / "launch/prepare_data.py", "--tokenizer", tok, "--mono", f"zh={texts / 'zh.txt'}",
                "--out", out, "--quiet")
    _one_error(proc, *expect)
    assert sorted(tmp_path.iterdir()) == before
    if case == "out_is_a_file":
        assert out.read_text() == "mine"


@pytest.mark.parametrize("side", [[1, 2], None, {"text": "你好"}], ids=["list", "null", "object"])
def test_jsonl_side_that_is_not_a_string_is_an_error_naming_the_line(tokenizer, tmp_path, side):
    """Not skipped, not stringified: an error naming file and line (the CLI path: jsonl_number_side above)."""
    rec = {"src": "你好", "tgt": side, "src_lang": "zh", "tgt_lang": "kk"}
    (tmp_path / "p.jsonl").write_text("{not json\n\n" + json.dumps(rec, ensure_ascii=False) + "\n")
    with pytest.raises(DataError) as e:
        prepare(tokenizer.saved_dir, tmp_path / "out", parallel_jsonl=[str(tmp_path / "p.jsonl")],
                show_progress=False)
    assert str(e.value) == (f"{tmp_path / 'p.jsonl'}:3: field 'tgt' is "
                            f"{json.dumps(side, ensure_ascii=False)}, expected a string")
    assert sorted(tmp_path.iterdir()) == [tmp_path / "p.jsonl"]


# -- generate.py ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tiny_xlmr_dir, tmp_path_factory) -> Path:
    from swcm.convert.from_encoder import convert_from_encoder

    return convert_from_encoder(tiny_xlmr_dir, tmp_path_factory.mktemp("gen") / "swcm", normal_layer_every=0)


def _generate(model, *args) -> subprocess.CompletedProcess:
    return _run(PY, ROOT / "launch/generate.py", "--model", model, "--src-lang", "zh", "--tgt-lang", "bo",
                "--max-new-tokens", "2", *args)


def test_generate_into_head_ends_quietly(model_dir, tmp_path):
    """`generate.py --input FILE | head -1` with far more output than a pipe holds: the first line arrives whole,
    generate.py ends with status 141 (as SIGPIPE ends `yes | head`), no traceback."""
    (tmp_path / "in.txt").write_text("".join(f"你好世界{i}\n" for i in range(3000)), encoding="utf-8")
    cmd = " ".join(map(str, [PY, ROOT / "launch/generate.py", "--model", model_dir, "--src-lang", "zh", "--tgt-lang",
                             "bo", "--max-new-tokens", "2", "--num-beams", "1", "--input", tmp_path / "in.txt"]))
    proc = subprocess.run(["bash", "-c", f'{cmd} | head -1; echo "generate status ${{PIPESTATUS[0]}}" >&2'],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert json.loads(proc.stdout)["source"] == "你好世界0"
    assert "generate status 141" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("case", ["beams_0", "beams_negative", "input_not_utf8", "input_empty", "input_missing",
                                  "model_missing", "model_without_config", "model_of_another_type"])
def test_generate_bad_input_is_one_error_line(model_dir, tokenizer, tiny_xlmr_dir, tmp_path, case):
    model, args = model_dir, ["--text", "你好"]
    if case.startswith("beams"):
        n = "0" if case == "beams_0" else "-2"
        args, expect = args + ["--num-beams", n], [f"--num-beams {n}", ">= 1"]
    elif case == "input_not_utf8":
        (tmp_path / "in.txt").write_bytes("你好\n".encode() + b"\xff\xfe bad\n")
        args, expect = ["--input", tmp_path / "in.txt"], [f"--input {tmp_path / 'in.txt'}:2", "UTF-8"]
    elif case == "input_empty":
        (tmp_path / "in.txt").write_bytes(b"\n \n")
        args, expect = ["--input", tmp_path / "in.txt"], [f"--input {tmp_path / 'in.txt'}", "no text"]
    elif case == "input_missing":
        args, expect = ["--input", tmp_path / "nope.txt"], [f"--input {tmp_path / 'nope.txt'}", "cannot read"]
    elif case == "model_missing":
        model = tmp_path / "no_model"
        expect = [f"--model {model}", "not found"]
    elif case == "model_without_config":   # a tokenizer directory
        model = tokenizer.saved_dir
        expect = [f"--model {model}", "config.json"]
    else:   # the encoder, not the SWCM model made from it
        model = tiny_xlmr_dir
        expect = [f"--model {model}", "not an SWCM model directory", "'xlm-roberta'"]
    proc = _generate(model, *args)
    _one_error(proc, *expect)
    assert proc.stdout == ""


def test_generate_reads_a_utf8_input_file(model_dir, tmp_path, capsys):
    """The checks let good input through (main() in-process: the model is already imported here)."""
    (tmp_path / "in.txt").write_text("你好\n世界\n", encoding="utf-8")
    assert generate.main(["--model", str(model_dir), "--src-lang", "zh", "--tgt-lang", "bo", "--input",
                          str(tmp_path / "in.txt"), "--num-beams", "1", "--max-new-tokens", "2"]) == 0
    assert [json.loads(line)["source"] for line in capsys.readouterr().out.splitlines()] == ["你好", "世界"]


def test_generate_refuses_empty_text_and_beams_beyond_the_vocabulary_or_memory(model_dir, tmp_path):
    """Before loading the model: an empty --text, more beams than tokens, a beam search whose estimate
    (swcm/tasks/beam_budget.py) exceeds half the available memory (2,000 texts x 2,000 beams: ~100 GB)."""
    (tmp_path / "in.txt").write_text("你好\n" * 2000, encoding="utf-8")
    for args, expect in ((["--text", ""], ["--text", "empty text"]),
                         (["--text", "你好", "--text", " "], ["--text", "empty text"]),
                         (["--text", "你好", "--num-beams", "100000"], ["--num-beams 100000", "more beams than"]),
                         (["--input", tmp_path / "in.txt", "--num-beams", "2000"], ["--num-beams 2000", "GiB"])):
        proc = _generate(model_dir, *args)
        _one_error(proc, *expect)
        assert proc.stdout == ""


# -- convert_checkpoint.py to-hf on damaged checkpoints ---------------------------------------------------------------

@pytest.fixture(scope="module")
def zero2_run(model_dir, tmp_path_factory) -> Path:
    """A run directory as pretrain.py leaves it, from a single-process ZeRO-2 engine (no launcher, one rank)."""
    return build_zero2_run(model_dir, tmp_path_factory.mktemp("run") / "run", _env())


def _to_hf_in_process(capsys, run, out) -> subprocess.CompletedProcess:
    """convert_checkpoint.py to-hf through main() in this process (its imports take seconds in a new one)."""
    capsys.readouterr()
    code = convert_checkpoint.main(["to-hf", "--run", str(run), "--out", str(out), "--no-verify"])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([], code, captured.out, captured.err)


def test_to_hf_converts_the_undamaged_checkpoint(zero2_run, tmp_path, capsys):
    proc = _to_hf_in_process(capsys, zero2_run, tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "hf" / "model.safetensors").is_file()


@pytest.mark.parametrize("case", ["truncated_optimizer", "truncated_model", "missing_rank_file",
                                  "foreign_optimizer_file"])
def test_to_hf_on_a_damaged_checkpoint_is_one_error_line(zero2_run, tmp_path, capsys, case):
    run = tmp_path / "run"
    shutil.copytree(zero2_run, run)
    ckpt = run / "checkpoints" / "step_00000001"
    optim, model = ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt", ckpt / "mp_rank_00_model_states.pt"
    if case == "truncated_optimizer":
        optim.write_bytes(optim.read_bytes()[: optim.stat().st_size // 2])
        expect = [str(optim), "truncated"]
    elif case == "truncated_model":
        model.write_bytes(model.read_bytes()[:-100])
        expect = [str(model), "truncated"]
    elif case == "missing_rank_file":
        optim.unlink()
        expect = [str(optim), "missing"]
    else:   # a complete archive with the wrong content: DeepSpeed's own error, wrapped
        shutil.copy(model, optim)
        expect = [str(ckpt), "DeepSpeed cannot read"]
    before = sorted(tmp_path.iterdir())
    if case == "truncated_optimizer":   # once as a real command line: nothing but the error line on stderr
        proc = _run(PY, ROOT / "launch/convert_checkpoint.py", "to-hf", "--run", run, "--out", tmp_path / "hf",
                    "--no-verify")
    else:
        proc = _to_hf_in_process(capsys, run, tmp_path / "hf")
    _one_error(proc, *expect)
    assert sorted(tmp_path.iterdir()) == before
