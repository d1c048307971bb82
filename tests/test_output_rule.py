"""The converters never destroy what is not theirs (issue 20, acceptance 1, 3 and 4 for from-encoder, to-hf and
universal): an --out that is, holds or lies inside an input, or a foreign directory under --overwrite, is one
`error:` line with every input byte-identical; a read-only or full --out is `error: PATH: reason` with nothing
left; SIGTERM / SIGINT is `error: interrupted` with status 143 / 130 and no temporary, and a temporary that a
killed run left is removed by the next one."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_run import build_zero2_run

from swcm.output_guard import MARKER, mark_ours, temporary_prefix

pytestmark = pytest.mark.slow   # a one-rank DeepSpeed engine builds the run; the interrupt tests start converters

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "launch" / "convert_checkpoint.py"
sys.path.insert(0, str(CLI.parent))
import convert_checkpoint  # noqa: E402


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    return env


@pytest.fixture(scope="module")
def project(tiny_xlmr_dir, tmp_path_factory) -> Path:
    """PROJECT/encoder (an XLM-R), PROJECT/swcm (from-encoder's output) and PROJECT/run (a ZeRO-2 run of it)."""
    from swcm.convert.from_encoder import convert_from_encoder

    project = tmp_path_factory.mktemp("project")
    shutil.copytree(tiny_xlmr_dir, project / "encoder")
    convert_from_encoder(project / "encoder", project / "swcm", normal_layer_every=0)
    build_zero2_run(project / "swcm", project / "run", _env())
    return project


def _prefix(out: Path, pid: int, role: str = "tmp") -> str:
    """The name prefix of process `pid`'s temporaries beside `out`."""
    return temporary_prefix(out, role).replace(f"-{os.getpid()}-", f"-{pid}-")


DEAD = 999_999_999   # above Linux's largest pid (2**22): a writer long gone


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(root.rglob("*"))}


def _main(capsys, *args) -> tuple[int, list[str]]:
    """convert_checkpoint.main in this process; the exit status and stderr's lines."""
    capsys.readouterr()
    code = convert_checkpoint.main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


def _one_error(code, lines, status, *needles) -> str:
    errors = [line for line in lines if line.startswith("error:")]
    assert code == status and len(errors) == 1 and not any("Traceback" in x for x in lines), lines
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


COMMANDS = {"from-encoder": ("--encoder", "encoder"), "to-hf": ("--run", "run"), "universal": ("--run", "run")}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["equal", "parent", "child", "foreign"])
def test_an_out_over_an_input_or_a_foreign_dir_is_refused_and_nothing_changes(project, command, where, capsys):
    flag, name = COMMANDS[command]
    source = project / name
    foreign = project.parent / f"thesis-{command}"
    foreign.mkdir(exist_ok=True)
    (foreign / "chapter1.tex").write_text("years of work")
    out = {"equal": source, "parent": project, "foreign": foreign,
           "child": source / ("checkpoints/step_00000001/x" if name == "run" else "sub")}[where]
    before = _snapshot(project.parent)
    code, lines = _main(capsys, command, flag, source, "--out", out, "--overwrite")
    expect = {"equal": "the input", "parent": "contains the input", "child": "lies inside the input",
              "foreign": "was not written by swcm (it holds chapter1.tex)"}[where]
    _one_error(code, lines, 2, f"--out {out}", expect)
    assert _snapshot(project.parent) == before


def test_to_hf_may_write_beside_the_run_s_inputs_and_overwrite_its_own_output(project, tmp_path, capsys):
    out = tmp_path / "run" / "hf"
    shutil.copytree(project / "run", tmp_path / "run")
    for _ in range(2):   # the second time replaces the first, which carries our marker
        code, lines = _main(capsys, "to-hf", "--run", tmp_path / "run", "--out", out, "--no-verify", "--overwrite")
        assert code == 0, lines
        assert (out / MARKER).is_file() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs directory mounted with `options` (skips where mounting is not allowed)."""
    mounted = []

    def make(options: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if res.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize("command", ["to-hf", "universal"])
def test_read_only_and_full_outputs_are_one_line_and_leave_nothing(project, command, mount, capsys):
    ro = mount("ro,size=4m")
    code, lines = _main(capsys, command, "--run", project / "run", "--out", ro / "out")
    _one_error(code, lines, 2, f"{ro / 'out'}: Read-only file system")
    # Room for the 1 MiB probe, not for the weights: the disk fills while the output is written.
    full = mount("size=1200k")
    code, lines = _main(capsys, command, "--run", project / "run", "--out", full / "out", "--no-verify"
                        ) if command == "to-hf" else _main(capsys, command, "--run", project / "run", "--out",
                                                           full / "out")
    _one_error(code, lines, 2, f"{full / 'out'}: no space left on device")
    assert list(full.iterdir()) == [] and list(ro.iterdir()) == []


def _wait_for(pattern_dir: Path, glob: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not list(pattern_dir.glob(glob)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the converter never started writing"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_conversion_exits_128_plus_signal_and_leaves_no_temporary(project, tmp_path, signum):
    command = ["to-hf", "--run", project / "run"] if signum == signal.SIGTERM else ["universal", "--run",
                                                                                   project / "run"]
    out = tmp_path / "out"
    stale, live = tmp_path / (_prefix(out, DEAD) + "abcd"), tmp_path / (_prefix(out, os.getpid()) + "abcd")
    other_host = tmp_path / f".out.tmp-elsewhere-{DEAD}-abcd"
    for d in (stale, live, other_host):
        d.mkdir()
    proc = subprocess.Popen([sys.executable, str(CLI), *map(str, command), "--out", str(out)], cwd=ROOT,
                            env=_env(), stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(tmp_path, _prefix(out, proc.pid) + "*", proc)
        os.killpg(proc.pid, signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = stderr.strip().splitlines()
    _one_error(proc.returncode, lines, 128 + signum, "error: interrupted")
    assert lines[-1] == "error: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name])


def test_a_previous_output_set_aside_by_a_killed_writer_is_put_back(project, tmp_path, capsys):
    out = tmp_path / "swcm"
    retired = tmp_path / (_prefix(out, DEAD, "old") + "abcd")
    shutil.copytree(project / "swcm", retired)
    mark_ours(retired, "model")
    code, lines = _main(capsys, "from-encoder", "--encoder", project / "encoder", "--out", out)
    _one_error(code, lines, 2, "exists and is not empty")   # the put-back output is found, not silently lost
    assert (out / "model.safetensors").is_file() and not retired.exists()
