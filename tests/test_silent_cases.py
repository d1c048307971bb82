"""Cases that used to pass silently are refused with one `error:` line, or handled: out-of-range integers
(make_task_jsonl --limit, inspect_data --batches/--epochs/--rank, pretrain --max-steps), a byte-order mark at the
start of a text file, an --out that is an input, and the process-group variables without a launcher."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from swcm.training.entry import single_process_defaults

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import inspect_data  # noqa: E402
import make_task_jsonl  # noqa: E402


def _one_error(capsys, code: int, *needles: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def pair(tmp_path):
    """Aligned zh/bo files; the first line of zh.txt starts with a UTF-8 byte-order mark (as Notepad saves)."""
    (tmp_path / "a.zh").write_bytes("\ufeff你好\n世界\n早上好\n".encode("utf-8"))
    (tmp_path / "a.bo").write_text("བཀྲ་ཤིས།\nའཛམ་གླིང་།\nཞོགས་པ།\n", encoding="utf-8")
    return tmp_path


def _parallel(pair, *extra) -> list[str]:
    return ["parallel", "--src", str(pair / "a.zh"), "--tgt", str(pair / "a.bo"), "--src-lang", "zh", "--tgt-lang",
            "bo", *map(str, extra)]


def test_make_task_jsonl_strips_the_bom_and_keeps_the_first_n(pair, capsys):
    import json

    assert make_task_jsonl.main(_parallel(pair, "--out", pair / "t.jsonl", "--limit", 2)) == 0
    records = [json.loads(x) for x in (pair / "t.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["source"] for r in records] == ["你好", "世界"]


@pytest.mark.parametrize("limit", [-3, -1])
def test_make_task_jsonl_refuses_a_negative_limit(pair, capsys, limit):
    _one_error(capsys, make_task_jsonl.main(_parallel(pair, "--out", pair / "t.jsonl", "--limit", limit)),
               f"--limit {limit}")
    assert not (pair / "t.jsonl").exists()


def test_make_task_jsonl_never_writes_over_its_input(pair, capsys):
    before = (pair / "a.bo").read_bytes()
    (pair / "link.bo").symlink_to(pair / "a.bo")
    _one_error(capsys, make_task_jsonl.main(_parallel(pair, "--out", pair / "link.bo")), "--out", "the input")
    assert (pair / "a.bo").read_bytes() == before


@pytest.mark.parametrize("args,needle", [(["--batches", "-3"], "--batches -3"), (["--epochs", "0"], "--epochs 0"),
                                         (["--batches", "2", "--rank", "2", "--world-size", "2"], "--rank 2"),
                                         (["--batches", "2", "--num-workers", "-1"], "--num-workers -1")])
def test_inspect_data_refuses_out_of_range_integers_before_reading(tmp_path, capsys, args, needle):
    _one_error(capsys, inspect_data.main([str(tmp_path / "no-shards"), *args]), needle)


def test_pretrain_refuses_a_huge_max_steps(tmp_path):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "launch/pretrain.py", "--config", "configs/demo.json", "--deepspeed_config",
                          "ds_configs/zero0.json", "--out", str(tmp_path / "run"), "--max-steps",
                          "99999999999999999999999"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    errors = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1 and "max_steps" in errors[0], res.stderr[-3000:]
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()


def test_without_launcher_variables_the_process_is_a_job_of_one():
    env = {"PATH": "/bin"}
    assert single_process_defaults(env)
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    assert 0 < int(env["MASTER_PORT"]) < 65536
    for launched in ({"RANK": "3", "WORLD_SIZE": "4"}, {"OMPI_COMM_WORLD_SIZE": "2"}, {"SLURM_NTASKS": "8"}):
        assert not single_process_defaults(dict(launched)), launched
