"""launch/evaluate.py on a tiny SWCM model: predictions independent of the batch size and in input order, the
scores file equal to swcm.tasks on the predictions, --compare, and one `error:` line for every bad input; plus
the task JSONL reader and the generation batches."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from swcm.convert.from_encoder import convert_from_encoder
from swcm.tasks.generation import generate, length_batches
from swcm.tasks.jsonl import MRC_SEPARATOR, DataError, Example, read_examples, read_likelihood, read_predictions
from swcm.tasks.model_dir import lang_codes, load, load_layout
from swcm.tasks.scores import score_predictions

pytestmark = pytest.mark.slow   # beam search over tiny models in subprocesses

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "launch" / "evaluate.py"
NTREX = REPO / "data" / "demo" / "parallel" / "ntrex128"
GENERATE = ["--beam", "2", "--max-new-tokens", "6"]


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, str(CLI), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=300)


def run_main(*args) -> subprocess.CompletedProcess:
    """launch/evaluate.py's main() in this process, for what ends before a model runs (no interpreter start per
    case): its exit status (argparse's too), stdout and stderr."""
    sys.path.insert(0, str(CLI.parent))
    import evaluate

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = evaluate.main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(tiny_xlmr_dir, tmp_path_factory):
    """A tiny SWCM export whose beams depend on the source. The converter's own initialisation (decoder
    weights ~N(0, 0.02)) makes a random model repeat one token for any input, which would let a batching bug
    pass unseen; the decoder is random and untied and every weight gets seeded noise instead."""
    out = convert_from_encoder(tiny_xlmr_dir, tmp_path_factory.mktemp("eval") / "swcm", tie_word_embeddings=False,
                               decoder_init="random", seed=3)
    weights = out / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in load_file(weights).items()}
    save_file(state, weights, metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """14 zh->bo lines with 4 zh->ug lines among them, and one Tibetan MRC line."""
    lines = {lang: (NTREX / f"ntrex128.dev.{lang}").read_text(encoding="utf-8").splitlines()
             for lang in ("zh", "bo", "ug")}
    rows = []
    for i in range(14):
        rows.append({"source": lines["zh"][i], "target": lines["bo"][i], "src_lang": "zh", "tgt_lang": "bo"})
        if i % 4 == 1:
            rows.append({"source": lines["zh"][i], "target": lines["ug"][i], "src_lang": "zh", "tgt_lang": "ug"})
    rows.append({"question": lines["bo"][20], "context": lines["bo"][21], "answer": lines["bo"][21][:12], "lang": "bo"})
    return jsonl(tmp_path_factory.mktemp("eval") / "test.jsonl", rows)


@pytest.fixture(scope="module")
def runs(model_dir, data_file, tmp_path_factory):
    """evaluate.py with batch size 1 and 16: {batch size: (process, prediction file, scores file)}."""
    out = tmp_path_factory.mktemp("runs")
    result = {}
    for batch_size in (1, 16):
        pred, scores = out / f"pred{batch_size}.jsonl", out / f"scores{batch_size}.json"
        proc = run_cli("--model", model_dir, "--data", data_file, "--out", pred, "--scores-out", scores,
                       "--batch-size", batch_size, *GENERATE)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result[batch_size] = proc, pred, scores
    return result


def test_predictions_do_not_depend_on_batch_size_and_keep_input_order(runs, data_file):
    examples = read_examples(data_file)
    (_, pred1, _), (_, pred16, _) = runs[1], runs[16]
    ex1, p1 = read_predictions(pred1)
    ex16, p16 = read_predictions(pred16)
    assert p1 == p16
    assert len(set(p1)) >= 4, p1  # the model's beams depend on the input: the comparison can fail
    for e, mine in zip(examples, ex1, strict=True):
        assert (e.source, e.target, e.src_lang, e.tgt_lang) == (mine.source, mine.target, mine.src_lang,
                                                               mine.tgt_lang)


def test_each_prediction_belongs_to_its_input(runs, model_dir):
    """Every line's prediction equals generating for that line's source alone (batch sizes 1 and 16 alike would
    not notice predictions written against the wrong inputs)."""
    examples, predictions = read_predictions(runs[16][1])
    model, layout = load(model_dir, "cpu"), load_layout(model_dir, lang_codes(model_dir))
    alone = [generate(model, layout, [e], num_beams=2, max_new_tokens=6, progress=False)[0] for e in examples]
    assert alone == predictions


def test_scores_file_equals_swcm_tasks_on_the_predictions(runs):
    proc, pred, scores_path = runs[16]
    report = json.loads(scores_path.read_text(encoding="utf-8"))
    assert report["scores"] == score_predictions(*read_predictions(pred), read_likelihood(pred))
    assert list(report["scores"]) == ["bo", "ug", "overall"]
    bo, overall = report["scores"]["bo"], report["scores"]["overall"]
    assert bo["n"] == 15 and report["scores"]["ug"]["n"] == 4 and overall["n"] == 19
    assert bo["bleu"]["tokenizer"] == "bo-syllables" and "tok:none" in bo["bleu"]["signature"]
    ug = report["scores"]["ug"]["bleu"]
    assert ug["tokenizer"] == "intl" and "tok:intl" in ug["signature"] and isinstance(ug["score"], float)
    assert overall["bleu"] == {"score": None, "tokenizer": "mixed", "signature": None}  # bo and ug differ
    assert set(bo["rouge_l"]) == {"f", "p", "r"} and isinstance(bo["chrf"], float)
    assert report["throughput"]["sentences"] == 19 and report["throughput"]["sentences_per_s"] > 0
    assert "sentences/s" in proc.stdout and "bo-syllables" in proc.stdout


def test_compare_with_itself_and_with_a_better_system(runs, tmp_path):
    _, pred, _ = runs[1]
    same = run_main("--predictions", pred, "--compare", runs[16][1], "--scores-out", tmp_path / "same.json")
    assert same.returncode == 0, same.stderr[-3000:]
    groups = json.loads((tmp_path / "same.json").read_text())["compare"]["groups"]
    for group in groups.values():
        nll = group.pop("nll")   # batches of 1 and 16 pad differently: equal up to float rounding (~1e-8)
        assert max(abs(nll["delta"]), *map(abs, nll["ci95"])) < 1e-6, nll
        for d in group.values():
            assert d == {"delta": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0}
    # An oracle (the references as predictions, no likelihood) against the model: better on every metric,
    # significantly; the NLL is not compared (the oracle has none).
    oracle = [json.loads(line) for line in pred.read_text(encoding="utf-8").splitlines()]
    oracle = jsonl(tmp_path / "oracle.jsonl", [{k: v for k, v in {**row, "prediction": row["target"]}.items()
                                                if k not in ("nll", "tokens")} for row in oracle])
    better = run_main("--predictions", oracle, "--compare", pred, "--scores-out", tmp_path / "better.json")
    assert better.returncode == 0, better.stderr[-3000:]
    bo = json.loads((tmp_path / "better.json").read_text())["compare"]["groups"]["bo"]
    assert set(bo) == {"chrf", "bleu", "rouge_l_f", "rouge_l_p", "rouge_l_r"}
    assert all(d["delta"] > 0 and d["p_value"] < 0.05 for d in bo.values()), bo
    assert "95% interval" in better.stdout and "NLL not compared" in better.stdout


def test_compare_needs_the_same_inputs_in_the_same_order(runs, tmp_path):
    _, pred, _ = runs[1]
    lines = pred.read_text(encoding="utf-8").splitlines(keepends=True)
    swapped = tmp_path / "swapped.jsonl"
    swapped.write_text("".join([lines[1], lines[0], *lines[2:]]), encoding="utf-8")
    proc = run_main("--predictions", pred, "--compare", swapped)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {swapped}:1: source differs from {pred}:1")


GOOD = json.dumps({"source": "你好", "target": "བཀྲ་ཤིས།", "src_lang": "zh", "tgt_lang": "bo"}, ensure_ascii=False)
BAD_DATA = {
    "missing field": ([GOOD, '{"source": "a", "src_lang": "zh", "tgt_lang": "bo"}'], ":2: missing field 'target'"),
    "number": (['{"source": 5, "target": "b", "src_lang": "zh", "tgt_lang": "bo"}'], ":1: field 'source' must be "
                                                                                     "a string, got a number"),
    "list": (['{"source": "a", "target": ["b"], "src_lang": "zh", "tgt_lang": "bo"}'], ":1: field 'target' must "
                                                                                      "be a string, got a list"),
    "null": ([GOOD, GOOD, '{"source": "a", "target": "b", "src_lang": null, "tgt_lang": "bo"}'],
             ":3: field 'src_lang' must be a string, got null"),
    "unknown language": ([GOOD, '{"source": "a", "target": "b", "src_lang": "zh", "tgt_lang": "xx"}'],
                         ":2: tgt_lang 'xx' is not a language of the model"),
    "mrc without answer": (['{"question": "q", "context": "c", "lang": "bo"}'], ":1: missing field 'answer'"),
    "invalid json": ([GOOD, '{"source": "a",'], ":2: not valid JSON"),
    "not an object": (['["a", "b"]'], ":1: expected a JSON object, got a list"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_gives_one_error_line(case, model_dir, tmp_path):
    lines, expected = BAD_DATA[case]
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _assert_one_error(run_main("--model", model_dir, "--data", data, "--out", tmp_path / "pred.jsonl", *GENERATE),
                      f"error: {data}{expected}", tmp_path / "pred.jsonl")


def _assert_one_error(proc, prefix: str, out: Path):
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(prefix), proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))  # no temporary file left either


def test_bad_files_and_arguments_give_one_error_line(model_dir, tiny_xlmr_dir, data_file, tmp_path):
    out = tmp_path / "pred.jsonl"
    not_utf8 = tmp_path / "latin1.jsonl"
    not_utf8.write_bytes((GOOD + "\n" + GOOD + "\n").encode() + '{"source": "caf\xe9"}\n'.encode("latin-1"))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    cases = [
        (["--model", model_dir, "--data", not_utf8], f"error: {not_utf8}:3: not valid UTF-8"),
        (["--model", model_dir, "--data", empty], f"error: {empty}: no examples"),
        (["--model", model_dir, "--data", tmp_path / "no.jsonl"], f"error: {tmp_path / 'no.jsonl'}: file not found"),
        (["--model", model_dir, "--data", data_file, "--beam", "0"], "error: --beam: expected at least 1, got 0"),
        (["--model", tmp_path / "no-model", "--data", data_file], f"error: {tmp_path / 'no-model'}: model directory"),
        (["--model", tiny_xlmr_dir, "--data", data_file], f"error: {tiny_xlmr_dir / 'config.json'}: not a sequence-"
                                                          "to-sequence model (model_type is 'xlm-roberta'"),
        (["--model", tmp_path, "--data", data_file], f"error: {tmp_path / 'config.json'}: not found"),
        (["--model", model_dir, "--data", data_file, "--lang-map", "bo=bo_CN"], "error: --lang-map: an SWCM model"),
        (["--model", model_dir, "--data", data_file, "--lang-map", "bo"], "error: --lang-map bo: expected CODE=TOKEN"),
    ]
    for args, prefix in cases:
        _assert_one_error(run_main(*GENERATE, *args, "--out", out), prefix, out)


def test_help():
    proc = run_main("--help")
    assert proc.returncode == 0 and "--compare" in proc.stdout and "--predictions" in proc.stdout


def test_read_examples_mrc_blank_lines_and_bom(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (GOOD + "\n\n  \n" + json.dumps(
        {"question": "ལོ་གང་།", "context": "ལོ་ ༡༩༤༨", "answer": "༡༩༤༨", "lang": "bo", "id": 7}) + "\n").encode())
    first, mrc = read_examples(path, ["bo", "zh"])
    assert first == Example("你好", "བཀྲ་ཤིས།", "zh", "bo", 1)
    assert mrc == Example("ལོ་གང་།" + MRC_SEPARATOR + "ལོ་ ༡༩༤༨", "༡༩༤༨", "bo", "bo", 4)
    with pytest.raises(DataError, match=r"t\.jsonl:1: src_lang 'zh' is not a language of the model \(one of bo\)"):
        read_examples(path, ["bo"])


def test_length_batches_one_target_language_each_longest_first():
    langs = ["bo", "ug", "bo", "bo", "ug", "bo", "bo"]
    examples = [Example("s", "t", "zh", lang, i + 1) for i, lang in enumerate(langs)]
    lengths = [3, 9, 7, 1, 2, 7, 5]
    batches = length_batches(examples, lengths, batch_size=2)
    assert batches == [[2, 5], [6, 0], [3], [1, 4]]  # bo by length (7, 7 in input order, 5, 3, 1), then ug


def test_nll_is_the_swcm_models_own_loss(runs, model_dir, data_file):
    """The ug group (4 examples: one batch) against SWCM's own loss on a batch from the training builder, the
    target tag's label masked (it is given to the decoder, not part of the reference)."""
    from swcm.seq2seq_inputs import build_seq2seq_inputs
    from swcm.tokenization import load_tokenizer

    report = json.loads(runs[16][2].read_text(encoding="utf-8"))
    ug = [e for e in read_examples(data_file) if e.tgt_lang == "ug"]
    batch = build_seq2seq_inputs(load_tokenizer(model_dir), [e.source for e in ug], [e.target for e in ug], "zh", "ug")
    batch["labels"][:, 0] = -100
    with torch.no_grad():
        loss = load(model_dir, "cpu")(**batch).loss.item()
    assert report["scores"]["ug"]["tokens"] == int(batch["labels"].ne(-100).sum())
    assert report["scores"]["ug"]["nll"] == pytest.approx(loss, abs=1e-6)


def test_constant_baseline_in_the_scores_file(runs):
    """Every input gets its language's most frequent prediction (ties: the first in input order), counted here."""
    from collections import Counter

    _, pred, scores_path = runs[16]
    examples, predictions = read_predictions(pred)
    most = {}
    for lang in {e.tgt_lang for e in examples}:
        mine = [p for e, p in zip(examples, predictions) if e.tgt_lang == lang]
        top = max(Counter(mine).values())
        most[lang] = next(p for p in mine if mine.count(p) == top)
    constant = json.loads(scores_path.read_text(encoding="utf-8"))["constant"]["scores"]
    assert constant == score_predictions(examples, [most[e.tgt_lang] for e in examples])
    assert constant["bo"]["distinct"] == pytest.approx(100 / 15)


def test_outputs_that_are_or_lie_inside_inputs_are_refused(model_dir, data_file, tmp_path):
    """Nothing is generated and every input stays byte-identical."""
    before = {p: p.read_bytes() for p in [data_file, *model_dir.iterdir()] if p.is_file()}
    pred = tmp_path / "pred.jsonl"
    cases = [(["--out", data_file], f"error: --out {data_file} the input {data_file}"),
             (["--out", model_dir / "pred.jsonl"], f"error: --out {model_dir / 'pred.jsonl'} lies inside the input"),
             (["--out", pred, "--scores-out", data_file], f"error: --scores-out {data_file} the input"),
             (["--out", pred, "--scores-out", pred], f"error: --scores-out {pred} the input {pred}")]
    for extra, prefix in cases:
        proc = run_main("--model", model_dir, "--data", data_file, *GENERATE, *extra)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith(prefix), proc.stderr
    assert {p: p.read_bytes() for p in before} == before and not (model_dir / "pred.jsonl").exists()
    assert not pred.exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_location_is_one_error_line_before_any_work(model_dir, data_file, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for flag in ("--out", "--scores-out"):
            outs = {"--out": tmp_path / "pred.jsonl", "--scores-out": tmp_path / "s.json", flag: locked / "x.json"}
            start = time.monotonic()
            proc = run_main("--model", model_dir, "--data", data_file, *GENERATE,
                            *(a for k, v in outs.items() for a in (k, v)))
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
            assert proc.stderr.startswith(f"error: {flag} {locked / 'x.json'}: Permission denied"), proc.stderr
            assert "likelihood" not in proc.stderr and not (tmp_path / "pred.jsonl").exists()
            assert time.monotonic() - start < 60
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_is_one_line_and_leaves_no_output(sig, code, model_dir, data_file, tmp_path):
    """Signalled (its process group, as a terminal or a scheduler does) while it generates."""
    pred = tmp_path / "pred.jsonl"
    proc = subprocess.Popen([sys.executable, str(CLI), "--model", str(model_dir), "--data", str(data_file), "--out",
                             str(pred), "--beam", "4", "--max-new-tokens", "200", "--batch-size", "1"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = ""
        while "likelihood" not in line:   # the likelihood bar ends with a newline: generation has begun
            line = proc.stderr.readline()
            assert line, "evaluate.py ended before generating"
        time.sleep(1)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err
    assert err.rstrip().splitlines()[-1] == "error: interrupted" and "Traceback" not in err, err
    assert not pred.exists() and not list(tmp_path.glob(".pred.jsonl*"))


def test_a_full_disk_at_the_final_write_is_one_line_naming_it(runs, tmp_path, monkeypatch, capsys):
    """In-process, with the write failing as a full filesystem fails it (ENOSPC): exit 1, one line naming the path
    and the cause, and nothing at --scores-out."""
    import errno
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_cli", CLI)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{path}.tmp")

    monkeypatch.setattr(cli, "write_atomic", full)
    out = tmp_path / "scores.json"
    assert cli.main(["--predictions", str(runs[1][1]), "--scores-out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: --scores-out {out}: no space left on device\n" and not out.exists()
