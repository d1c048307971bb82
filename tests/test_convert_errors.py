"""from-encoder refuses bad input with a one-line `error: ...`, a non-zero exit and nothing written."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, GPT2Config, XLMRobertaConfig, XLMRobertaModel

from swcm.convert import ConversionError
from swcm.convert.from_encoder import convert_from_encoder
from swcm.output_guard import mark_ours

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "launch" / "convert_checkpoint.py"
sys.path.insert(0, str(CLI.parent))
import convert_checkpoint  # noqa: E402


def run_cli_subprocess(*args):
    return subprocess.run([sys.executable, str(CLI), "from-encoder", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def run_cli(capsys, *args) -> str:
    """main() in-process; returns the error message it prints (asserting exit status 2 and one `error:` line)."""
    capsys.readouterr()
    assert convert_checkpoint.main(["from-encoder", *map(str, args)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def assert_nothing_written(parent: Path, before: set):
    assert set(parent.iterdir()) == before, f"left behind: {set(parent.iterdir()) - before}"


def _copy(src: Path, dst: Path, skip=()) -> Path:
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n in skip])
    return dst


def test_missing_encoder_dir_subprocess(tmp_path):
    proc = run_cli_subprocess("--encoder", tmp_path / "nope", "--out", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("config", [BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=32),
                                    GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2)],
                         ids=["bert", "gpt2"])
def test_non_xlmr_checkpoint(config, tmp_path, capsys):
    enc = tmp_path / "enc"
    config.save_pretrained(enc)
    before = set(tmp_path.iterdir())
    message = run_cli(capsys, "--encoder", enc, "--out", tmp_path / "out")
    assert "config.json" in message and config.model_type in message and "xlm-roberta" in message
    assert_nothing_written(tmp_path, before)


def test_missing_weights(tiny_xlmr_dir, tmp_path, capsys):
    enc = _copy(tiny_xlmr_dir, tmp_path / "enc", skip={"model.safetensors"})
    before = set(tmp_path.iterdir())
    message = run_cli(capsys, "--encoder", enc, "--out", tmp_path / "out")
    assert "no weights" in message and "model.safetensors" in message
    assert_nothing_written(tmp_path, before)


def test_tokenizer_size_must_match_embedding_rows(tiny_xlmr_dir, tmp_path, capsys):
    enc = _copy(tiny_xlmr_dir, tmp_path / "enc", skip={"model.safetensors", "config.json"})
    config = XLMRobertaConfig.from_pretrained(tiny_xlmr_dir)
    config.vocab_size += 3  # e.g. an embedding padded to a multiple of 8 without the matching tokenizer
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(enc)
    before = set(tmp_path.iterdir())
    message = run_cli(capsys, "--encoder", enc, "--out", tmp_path / "out")
    assert "tokenizer" in message and str(config.vocab_size) in message and "rows" in message
    assert_nothing_written(tmp_path, before)


def test_existing_out_needs_overwrite_and_must_be_ours(tiny_xlmr_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = set(tmp_path.iterdir())
    message = run_cli(capsys, "--encoder", tiny_xlmr_dir, "--out", out)
    assert "--overwrite" in message and str(out) in message
    message = run_cli(capsys, "--encoder", tiny_xlmr_dir, "--out", out, "--overwrite")
    assert "not written by swcm" in message and "keep.txt" in message
    assert_nothing_written(tmp_path, before)
    assert (out / "keep.txt").read_text() == "mine"
    # An output of ours (as an earlier conversion leaves it) is replaced with --overwrite, atomically and completely.
    mark_ours(out, "model")
    assert convert_checkpoint.main(["from-encoder", "--encoder", str(tiny_xlmr_dir), "--out", str(out), "--overwrite",
                                    "--dtype", "bfloat16", "--normal-layer-every", "0", "--untie-lm-head"]) == 0
    assert not (out / "keep.txt").exists() and set(tmp_path.iterdir()) == before
    assert {"config.json", "model.safetensors", "generation_config.json", "modeling_swcm.py", "README.md",
            "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["decoder_layers"] == 4 and config["tie_word_embeddings"] is False and config["auto_map"]
    weights = load_file(str(out / "model.safetensors"))
    assert weights["lm_head.weight"].dtype == torch.bfloat16


def test_truncated_weights_file_is_reported(tiny_xlmr_dir, tmp_path):
    enc = _copy(tiny_xlmr_dir, tmp_path / "enc")
    (enc / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ConversionError, match="cannot read .*model.safetensors"):
        convert_from_encoder(enc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


class NotATensor:
    """Stands for arbitrary pickled code: a .bin holding it must be refused, never unpickled."""


def test_pickled_objects_in_bin_are_refused(tiny_xlmr_dir, tmp_path):
    enc = _copy(tiny_xlmr_dir, tmp_path / "enc", skip={"model.safetensors"})
    torch.save({"embeddings.word_embeddings.weight": NotATensor()}, enc / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="cannot read .*pytorch_model.bin"):
        convert_from_encoder(enc, tmp_path / "out")
    assert not (tmp_path / "out").exists()
