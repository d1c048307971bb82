"""Model cards of exported directories (`from-encoder` and `to-hf`): the Hugging Face metadata block the Hub reads,
the licence given on the command line, and a fine-tuning snippet that runs as written where swcm is not installed
(docs/huggingface.md)."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from without_swcm import run_without_swcm, run_without_swcm_in_a_terminal

from swcm.convert.from_encoder import convert_from_encoder
from swcm.convert import to_hf
from swcm.modeling_swcm import SWCMForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]
NTREX = ROOT / "data" / "demo" / "parallel" / "ntrex128" / "ntrex128"
sys.path.insert(0, str(ROOT / "launch"))
import convert_checkpoint  # noqa: E402


def metadata(model_dir: Path) -> dict:
    """The YAML block of `model_dir`/README.md as huggingface_hub parses it."""
    return ModelCard((model_dir / "README.md").read_text(encoding="utf-8")).data.to_dict()


def snippet(model_dir: Path) -> str:
    """The Python source of the card's fine-tuning snippet (the fenced block under `## Fine-tune`)."""
    section = (model_dir / "README.md").read_text(encoding="utf-8").split("\n## Fine-tune\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0] + "\n"


@pytest.fixture(scope="module")
def initialised(tiny_xlmr_dir, tmp_path_factory):
    return convert_from_encoder(tiny_xlmr_dir, tmp_path_factory.mktemp("card") / "swcm-init", normal_layer_every=1)


def test_from_encoder_card_has_hub_metadata(initialised):
    data = metadata(initialised)
    assert data["language"] == json.loads((initialised / "config.json").read_text())["lang_codes"]
    assert data["language"] == ["bo", "kk", "mn", "ug", "zh"]
    assert data["license"] == "other" and data["license_name"] == "inherited"
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert "text2text-generation" in data["tags"]
    card = (initialised / "README.md").read_text(encoding="utf-8")
    assert "## Licence" in card and "XLM-R: MIT" in card and "CINO: Apache-2.0" in card
    assert "MODEL = 'swcm-init'" in snippet(initialised)


def test_license_flag_sets_the_metadata_and_bad_ids_are_refused(tiny_xlmr_dir, tmp_path, capsys):
    out = tmp_path / "m"
    assert convert_checkpoint.main(["from-encoder", "--encoder", str(tiny_xlmr_dir), "--out", str(out),
                                    "--license", "apache-2.0", "--lang-codes", "bo,zh"]) == 0
    data = metadata(out)
    assert data["license"] == "apache-2.0" and "license_name" not in data and data["language"] == ["bo", "zh"]
    capsys.readouterr()
    assert convert_checkpoint.main(["from-encoder", "--encoder", str(tiny_xlmr_dir), "--out", str(tmp_path / "bad"),
                                    "--license", "MIT License"]) == 2
    assert "--license 'MIT License'" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_to_hf_card_has_the_same_metadata_and_snippet(initialised, tmp_path):
    """`to-hf`'s card, written for a fine-tuning run's checkpoint with the target tag forced (as finetune.py's
    export does); the whole export path is exercised by tests/test_demo.py."""
    model = SWCMForConditionalGeneration.from_pretrained(str(initialised))
    model.generation_config.forced_bos_token_id = model.config.lang_token_ids["bo"]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0 - s}) + "\n"
                                                    for s in range(1, 5)))
    info = {"task": "finetune", "world_size": 2, "deepspeed": {"zero_optimization": {"stage": 2}}}
    out = tmp_path / "hf"
    out.mkdir()
    (out / "README.md").write_text(to_hf._model_card(tmp_path, 3, info, model, 1234, "float32", out.name, "mit"))
    data = metadata(out)
    assert data["license"] == "mit" and "license_name" not in data
    assert data["language"] == ["bo", "kk", "mn", "ug", "zh"]
    assert data["pipeline_tag"] == "text-generation" and data["library_name"] == "transformers"
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "fine-tuning: checkpoint of step 3, training loss 6.0000" in card and "ZeRO stage 2" in card
    assert "forces `<bo>` after `<s>`" in card
    assert snippet(out) == snippet(initialised).replace("'swcm-init'", "'hf'")


@pytest.mark.slow   # trains in a fresh interpreter
def test_card_snippet_fine_tunes_without_swcm(initialised, tmp_path):
    """The snippet, extracted from the card and run in a process that cannot import swcm, on the 48 shortest NTREX
    zh-bo train pairs, unchanged but for 30 steps instead of its 200: the loss goes down, the fine-tuned model is
    saved, and neither loading nor generation warns."""
    zh = Path(f"{NTREX}.train.zh").read_text(encoding="utf-8").splitlines()
    bo = Path(f"{NTREX}.train.bo").read_text(encoding="utf-8").splitlines()
    pairs = sorted(zip(zh, bo), key=lambda p: len(p[0]) + len(p[1]))[:48]
    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({"source": s, "target": t, "src_lang": "zh", "tgt_lang": "bo"}, ensure_ascii=False) + "\n"
        for s, t in pairs), encoding="utf-8")
    (tmp_path / "swcm-init").symlink_to(initialised, target_is_directory=True)
    report = 'json.dump([h["loss"] for h in trainer.state.log_history if "loss" in h], open("losses.json", "w"))\n'
    code = snippet(initialised)
    assert "MAX_LEN, BATCH, LR, STEPS = 128, 16, 3e-4, 200\n" in code
    proc = run_without_swcm(code.replace("STEPS = 128, 16, 3e-4, 200", "STEPS = 128, 16, 3e-4, 30") + report, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Do you wish to run the custom code" not in proc.stdout + proc.stderr
    assert "seem to have been set" not in proc.stderr and "max_length" not in proc.stderr, proc.stderr[-4000:]
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2], losses
    assert (tmp_path / "swcm-init-finetuned" / "model.safetensors").is_file()


TOKENIZER_ONLY = """
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({path!r})
print("loaded", type(tok).__name__, len(tok), tok.convert_tokens_to_ids("<bo>"))
"""
PROMPT = "Do you wish to run the custom code"


@pytest.mark.parametrize("config", ["as exported", pytest.param("model_type swcm", marks=pytest.mark.slow)])
def test_autotokenizer_loads_an_export_in_a_terminal_without_asking(config, initialised, tmp_path):
    """In an interactive terminal (a pseudo-terminal, nothing typed) where swcm is not installed,
    `AutoTokenizer.from_pretrained` loads the export's tokenizer at once, with its language tags. The control: the
    same directory with the model_type swcm had before (a type transformers does not know, while auto_map names
    custom code) makes transformers ask, and the check sees the question."""
    model = tmp_path / "model"
    shutil.copytree(initialised, model)
    if config == "model_type swcm":
        fields = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**fields, "model_type": "swcm"}))
    status, output = run_without_swcm_in_a_terminal(TOKENIZER_ONLY.format(path=str(model)), tmp_path)
    fields = json.loads((initialised / "config.json").read_text())
    assert status == 0, output[-3000:]
    assert f"loaded XLMRobertaTokenizer {fields['vocab_size']} {fields['lang_token_ids']['bo']}" in output, \
        output[-3000:]
    assert (PROMPT in output) == (config == "model_type swcm"), output[-3000:]
