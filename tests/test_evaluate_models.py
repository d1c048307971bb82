"""launch/evaluate.py on Hugging Face seq2seq models that are not SWCM, built tiny here with transformers alone: an
EncoderDecoderModel with <xx> tags (the warm start's convention) and an mBART-50 model with its language codes.
The held-out NLL equals the model's own loss on a batch built by other code (swcm's training builder, mBART-50's
own tokenizer) to 1e-6; --compare bounds the NLL difference of a model and a copy trained on the references."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers_seq2seq import build_encoder_decoder, build_mbart, mbart50_tokenizer

pytestmark = pytest.mark.slow   # evaluate.py in subprocesses, a short training run

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "launch" / "evaluate.py"
NTREX = REPO / "data" / "demo" / "parallel" / "ntrex128"
GENERATE = ["--beam", "2", "--max-new-tokens", "5", "--batch-size", "16"]


def run_cli(*args):
    return subprocess.run([sys.executable, str(CLI), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def _lines(lang: str) -> list[str]:
    return (NTREX / f"ntrex128.dev.{lang}").read_text(encoding="utf-8").splitlines()


def task_file(path: Path, targets: dict[str, int]) -> Path:
    """zh -> each target language, the first n NTREX dev pairs of each (n <= 16: one batch per language)."""
    zh = _lines("zh")
    rows = [{"source": zh[i], "target": _lines(lang)[i], "src_lang": "zh", "tgt_lang": lang}
            for lang, n in targets.items() for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _report(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def encoder_decoder(work, tokenizer):
    return build_encoder_decoder(work / "ed", tokenizer)


@pytest.fixture(scope="module")
def mbart(work, demo_tokenizer_dir):
    return build_mbart(work / "mbart", mbart50_tokenizer(demo_tokenizer_dir))


@pytest.fixture(scope="module")
def ed_data(work):
    return task_file(work / "ed.jsonl", {"bo": 6, "kk": 5})


@pytest.fixture(scope="module")
def ed_run(encoder_decoder, ed_data, work):
    pred, scores = work / "ed.pred.jsonl", work / "ed.scores.json"
    proc = run_cli("--model", encoder_decoder, "--data", ed_data, "--out", pred, "--scores-out", scores, *GENERATE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pred, _report(scores)


def _own_loss(model, batch: dict, labels: torch.Tensor) -> tuple[float, int]:
    with torch.no_grad():
        loss = model(**batch, labels=labels).loss.item()
    return loss, int(labels.ne(-100).sum())


def test_encoder_decoder_nll_is_its_own_loss(encoder_decoder, ed_data, ed_run):
    """Per language (one batch each), NLL = the model's own mean cross-entropy on a batch from swcm's training
    builder, the target tag's label masked: the reference's tokens and </s> are scored, the given tag is not."""
    from transformers import EncoderDecoderModel

    from swcm.seq2seq_inputs import build_seq2seq_inputs
    from swcm.tasks.jsonl import read_examples
    from swcm.tokenization import load_tokenizer

    _, report = ed_run
    tokenizer = load_tokenizer(encoder_decoder)
    model = EncoderDecoderModel.from_pretrained(str(encoder_decoder)).eval()
    examples = read_examples(ed_data)
    total_nll, total_tokens = 0.0, 0
    for lang in ("bo", "kk"):
        mine = [e for e in examples if e.tgt_lang == lang]
        batch = build_seq2seq_inputs(tokenizer, [e.source for e in mine], [e.target for e in mine], "zh", lang)
        labels = batch.pop("labels")
        labels[:, 0] = -100
        loss, tokens = _own_loss(model, batch, labels)
        scores = report["scores"][lang]
        assert scores["tokens"] == tokens
        assert scores["nll"] == pytest.approx(loss, abs=1e-6)
        assert scores["ppl"] == pytest.approx(float(torch.exp(torch.tensor(loss, dtype=torch.float64))), rel=1e-6)
        total_nll, total_tokens = total_nll + loss * tokens, total_tokens + tokens
    assert report["scores"]["overall"]["nll"] == pytest.approx(total_nll / total_tokens, abs=1e-6)
    assert report["throughput"]["layout"] == "tags"


def test_mbart50_nll_is_its_own_loss_with_its_tokenizers_layout(mbart, work):
    """The batch comes from mBART-50's own tokenizer (src_lang / tgt_lang, text_target) and mBART's shift: the
    codes layout must give the same tensors for the NLL to match."""
    from transformers import AutoTokenizer, MBartForConditionalGeneration
    from transformers.models.mbart.modeling_mbart import shift_tokens_right

    data = task_file(work / "mbart.jsonl", {"kk": 5, "mn": 4})
    pred, scores = work / "mbart.pred.jsonl", work / "mbart.scores.json"
    proc = run_cli("--model", mbart, "--data", data, "--out", pred, "--scores-out", scores, *GENERATE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _report(scores)
    assert report["throughput"]["layout"] == "codes" and len(_rows(pred)) == 9
    tokenizer = AutoTokenizer.from_pretrained(str(mbart))
    model = MBartForConditionalGeneration.from_pretrained(str(mbart)).eval()
    zh = _lines("zh")
    for lang, code, n in (("kk", "kk_KZ", 5), ("mn", "mn_MN", 4)):
        tokenizer.src_lang, tokenizer.tgt_lang = "zh_CN", code
        enc = tokenizer(zh[:n], text_target=_lines(lang)[:n], padding=True, return_tensors="pt")
        labels = enc.pop("labels")
        labels = labels.masked_fill(labels.eq(tokenizer.pad_token_id), -100)
        decoder_input_ids = shift_tokens_right(labels, tokenizer.pad_token_id)   # </s> code y: mBART-50's start
        assert decoder_input_ids[0, 0] == tokenizer.eos_token_id
        masked = labels.clone()
        masked[:, 0] = -100                                                       # the code is given, not scored
        loss, tokens = _own_loss(model, {**enc, "decoder_input_ids": decoder_input_ids}, masked)
        assert report["scores"][lang]["tokens"] == tokens
        assert report["scores"][lang]["nll"] == pytest.approx(loss, abs=1e-6)


def test_a_language_the_model_cannot_mark_is_one_error_line(mbart, work):
    data = task_file(work / "mbart-bo.jsonl", {"kk": 2, "bo": 2})   # mBART-50 has no Tibetan code
    out = work / "mbart-bo.pred.jsonl"
    proc = run_cli("--model", mbart, "--data", data, "--out", out, *GENERATE)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {data}:3: tgt_lang 'bo': ") and "--lang-map bo=TOKEN" in proc.stderr
    assert not out.exists()
    ok = run_cli("--model", mbart, "--data", data, "--out", out, "--lang-map", "zh=zh_CN", "--lang-map", "kk=kk_KZ",
                 "--lang-map", "bo=ne_NP", *GENERATE)   # a user's choice of code for a language it lacks
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_compare_bounds_the_nll_difference_of_a_model_trained_on_the_references(encoder_decoder, ed_data, ed_run,
                                                                                work):
    """A copy of the model trained 30 steps on the test references must have the lower NLL, with a bootstrap
    interval below zero; the same predictions with themselves give an NLL difference of 0."""
    from transformers import EncoderDecoderModel

    from swcm.seq2seq_inputs import build_seq2seq_inputs
    from swcm.tasks.jsonl import read_examples
    from swcm.tokenization import load_tokenizer

    tokenizer = load_tokenizer(encoder_decoder)
    model = EncoderDecoderModel.from_pretrained(str(encoder_decoder)).train()
    examples = read_examples(ed_data)
    batch = build_seq2seq_inputs(tokenizer, [e.source for e in examples], [e.target for e in examples],
                                 [e.src_lang for e in examples], [e.tgt_lang for e in examples])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(30):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    trained = work / "ed-trained"
    model.eval().save_pretrained(str(trained))
    tokenizer.save_pretrained(str(trained))

    base_pred, _ = ed_run
    pred, scores = work / "trained.pred.jsonl", work / "trained.scores.json"
    proc = run_cli("--model", trained, "--data", ed_data, "--out", pred, "--scores-out", scores, "--compare",
                   base_pred, *GENERATE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups = _report(scores)["compare"]["groups"]
    for group in ("bo", "kk", "overall"):
        d = groups[group]["nll"]
        assert d["delta"] < 0 and d["ci95"][1] < 0, (group, d)
    assert groups["overall"]["nll"]["p_value"] < 0.01
    assert "nll" in proc.stdout

    same = run_cli("--predictions", base_pred, "--compare", base_pred, "--scores-out", work / "same.json")
    assert same.returncode == 0, same.stderr[-2000:]
    assert _report(work / "same.json")["compare"]["groups"]["overall"]["nll"] == {
        "delta": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0}
