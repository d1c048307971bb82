"""An export fine-tunes with plain Hugging Face tools where swcm is not installed: `AutoTokenizer` loads it (stdin
closed, as in a script), `DataCollatorForSeq2Seq` + `Seq2SeqTrainer(predict_with_generate=True)` train (the loss goes
down) and evaluate with generation, and a plain `generate()` then emits the target tag first, under the documented
convention (docs/huggingface.md)."""

import json
from pathlib import Path

import pytest
from without_swcm import run_without_swcm

pytestmark = pytest.mark.slow   # trains in a fresh interpreter

ROOT = Path(__file__).resolve().parents[1]
NTREX = ROOT / "data" / "demo" / "parallel" / "ntrex128" / "ntrex128"

PLAIN_HF = """
import json
from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                          Seq2SeqTrainingArguments)

MODEL = {model!r}
pairs = json.load(open("pairs.json"))
tok = AutoTokenizer.from_pretrained(MODEL)
model = AutoModelForSeq2SeqLM.from_pretrained(MODEL, trust_remote_code=True)

def features(src, tgt):
    # The convention: source "<src_lang>" + text; labels "<tgt_lang>" + text without the tokenizer's leading <s>.
    enc = tok("<zh>" + src, truncation=True, max_length=48)
    labels = tok(text_target="<bo>" + tgt, truncation=True, max_length=48)["input_ids"][1:]
    return {{"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}}

train = [features(s, t) for s, t in pairs["train"]]
dev = [features(s, t) for s, t in pairs["dev"]]
args = Seq2SeqTrainingArguments(output_dir="hf_out", per_device_train_batch_size=8, max_steps=120, learning_rate=5e-3,
                                warmup_steps=0, logging_steps=15, report_to=[], save_strategy="no", use_cpu=True,
                                predict_with_generate=True, generation_max_length=8, generation_num_beams=2,
                                per_device_eval_batch_size=4, disable_tqdm=True, seed=0, dataloader_num_workers=0)
trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev, processing_class=tok,
                         data_collator=DataCollatorForSeq2Seq(tok, model=model))
trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
predicted = trainer.predict(dev)
ids = tok("<zh>" + pairs["dev"][0][0], return_tensors="pt")
generated = model.generate(**ids, num_beams=2, max_new_tokens=6)
json.dump({{"losses": losses, "eval_loss": predicted.metrics["test_loss"],
           "predictions": predicted.predictions.tolist(), "generated": generated[0].tolist(),
           "bo": tok.convert_tokens_to_ids("<bo>"), "start": model.config.decoder_start_token_id}},
          open("result.json", "w"))
"""


@pytest.fixture(scope="module")
def export(tiny_xlmr_dir, tmp_path_factory):
    from swcm.convert.from_encoder import convert_from_encoder

    return convert_from_encoder(tiny_xlmr_dir, tmp_path_factory.mktemp("hf_ft") / "swcm", normal_layer_every=1)


def test_seq2seq_trainer_fine_tunes_an_export_without_swcm(export, tmp_path):
    zh = Path(f"{NTREX}.train.zh").read_text(encoding="utf-8").splitlines()
    bo = Path(f"{NTREX}.train.bo").read_text(encoding="utf-8").splitlines()
    (tmp_path / "pairs.json").write_text(json.dumps({"train": list(zip(zh[:32], bo[:32])),
                                                     "dev": list(zip(zh[32:36], bo[32:36]))}))
    proc = run_without_swcm(PLAIN_HF.format(model=str(export)), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    losses = result["losses"]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5, losses
    assert result["eval_loss"] > 0 and len(result["predictions"]) == 4
    # generate() with nothing forced: <s> (the decoder start), then the target tag fine-tuning taught
    assert result["generated"][:2] == [result["start"], result["bo"]], result["generated"]
    for row in result["predictions"]:
        assert row[1] == result["bo"]
