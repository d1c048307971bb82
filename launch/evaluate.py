#!/usr/bin/env python
"""Score a seq2seq model on a task JSONL file: held-out likelihood (per-token NLL and perplexity of the references
under teacher forcing), then beam search and chrF, BLEU, ROUGE-L F/P/R, with degeneracy diagnostics and a
constant-output baseline, per target language and overall; optionally compare with another system on the same
inputs (paired bootstrap, the NLL difference included).

    python launch/evaluate.py --model DIR --data test.jsonl --out pred.jsonl [--beam 5] [--max-new-tokens N]
        [--batch-size B] [--lang-map bo=bod_Tibt ...] [--scores-out scores.json] [--compare other_pred.jsonl]
    python launch/evaluate.py --predictions pred.jsonl [--scores-out scores.json] [--compare other_pred.jsonl]

DIR is an SWCM export or any Hugging Face AutoModelForSeq2SeqLM directory (the warm start's EncoderDecoderModel,
mBART-50, NLLB, M2M100, mT5); the target language is given the way the model expects (swcm/tasks/layouts.py).
Task lines: {"source","target","src_lang","tgt_lang"} or, for MRC, {"question","context","answer","lang"}.
Metrics, conventions and file formats: docs/evaluation.md. Bad input, and an output that is or lies inside an input
or whose location is read-only or full: one `error:` line, exit 2, before any work. An output that fails while
written at the end: one `error: FLAG PATH: reason` line, exit 1. SIGINT / SIGTERM: `error: interrupted`, exit 130 /
143, no partial output.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from swcm.output_guard import OutputError, check_output_file, check_writable, os_error_line
from swcm.atomic_write import write_atomic
from swcm.cli_exit import Interrupted, interrupts_raised, print_error
from swcm.tasks import model_dir
from swcm.tasks.jsonl import (DataError, check_same_inputs, prediction_lines, read_examples, read_likelihood,
                              read_predictions)
from swcm.tasks.layouts import LayoutError


class InputError(ValueError):
    """Bad command-line input; printed as one `error:` line."""


class WriteFailed(Exception):
    """An output could not be written at the end (disk full, say); the message is `FLAG PATH: reason`."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line and exit 2, like every other bad input (not usage + error)
        raise InputError(message)


def _lang_map(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        code, sep, token = item.partition("=")
        if not sep or not code or not token:
            raise InputError(f"--lang-map {item}: expected CODE=TOKEN (e.g. bo=bod_Tibt)")
        out[code] = token
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    system = p.add_mutually_exclusive_group(required=True)
    system.add_argument("--model", help="SWCM export or Hugging Face seq2seq model directory")
    system.add_argument("--predictions", help="score this prediction file (as --out writes) instead of a model")
    p.add_argument("--data", help="task JSONL file (with --model)")
    p.add_argument("--out", help="prediction JSONL to write, one line per input in input order (with --model)")
    p.add_argument("--beam", type=int, default=5, help="beam size (default 5)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="generated tokens per example (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per batch (default 16)")
    p.add_argument("--max-len", type=int, default=256, help="source and reference length cap in tokens (default 256)")
    p.add_argument("--lang-map", action="append", default=[], metavar="CODE=TOKEN",
                   help="the token that marks language CODE in the model's tokenizer, where it is not <CODE>, "
                        "__CODE__ or the one CODE_* token (repeatable)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--scores-out", help="write the scores (and the comparison) to this JSON file")
    p.add_argument("--compare", help="prediction JSONL of another system on the same inputs: paired bootstrap")
    args = p.parse_args(argv)
    if args.model and not (args.data and args.out):
        raise InputError("--model needs --data and --out")
    if args.predictions and (args.data or args.out or args.lang_map):
        raise InputError("--data, --out and --lang-map go with --model; --predictions scores an existing file")
    for name, least in (("beam", 1), ("max_new_tokens", 1), ("batch_size", 1), ("max_len", 4)):
        if getattr(args, name) < least:
            raise InputError(f"--{name.replace('_', '-')}: expected at least {least}, got {getattr(args, name)}")
    args.lang_map = _lang_map(args.lang_map)
    return args


def check_outputs(args) -> None:
    """OutputError unless --out and --scores-out are distinct files, apart from every input, in a directory that
    exists and takes a write (not read-only, not full): all before any work."""
    inputs = [args.model, args.data, args.predictions, args.compare]
    outputs = [(flag, path) for flag, path in (("--out", args.out), ("--scores-out", args.scores_out)) if path]
    for flag, path in outputs:
        check_output_file(path, inputs, flag=flag)
        if not Path(path).absolute().parent.is_dir():
            raise OutputError(f"{flag} {path}: directory {Path(path).absolute().parent} does not exist")
        check_writable(path, flag=flag)
    if len(outputs) == 2:
        check_output_file(args.scores_out, [args.out], flag="--scores-out")


def read_model_examples(args):
    """The examples of --data and the layout of --model that marks their languages. A language the model cannot
    mark is a DataError naming the first line that uses it."""
    found = model_dir.kind(args.model)
    if found == "swcm" and args.lang_map:
        raise InputError("--lang-map: an SWCM model marks languages with its own tags (config.json lang_codes); "
                         "leave --lang-map out")
    codes = model_dir.lang_codes(args.model) if found == "swcm" else None
    examples = read_examples(args.data, codes)
    used = sorted({code for e in examples for code in (e.src_lang, e.tgt_lang)})
    try:
        return examples, model_dir.load_layout(args.model, used, args.lang_map)
    except LayoutError as e:
        if e.code is None:
            raise InputError(str(e)) from None
        first = next(ex for ex in examples if e.code in (ex.src_lang, ex.tgt_lang))
        field = "src_lang" if first.src_lang == e.code else "tgt_lang"
        raise DataError(args.data, first.line, f"{field} {e.code!r}: {e}") from None


def run_model(args, layout, examples):
    """Likelihood statistics, predictions and a throughput record for `examples` with the model of `args`."""
    import torch

    from swcm.tasks.generation import generate
    from swcm.tasks.likelihood import likelihood_stats

    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise InputError(f"--device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available")
    model = model_dir.load(args.model, str(device))
    start = time.perf_counter()
    likelihood = likelihood_stats(model, layout, examples, batch_size=args.batch_size, max_len=args.max_len)
    scored = time.perf_counter()
    predictions = generate(model, layout, examples, num_beams=args.beam, max_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size, max_len=args.max_len)
    seconds = time.perf_counter() - scored
    return likelihood, predictions, {
        "sentences": len(examples), "likelihood_seconds": scored - start, "seconds": seconds,
        "sentences_per_s": len(examples) / seconds, "beam": args.beam, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "device": str(device), "layout": layout.kind}


def _write(path: str, text: str, flag: str) -> None:
    try:
        write_atomic(path, text)
    except OSError as e:
        raise WriteFailed(f"{flag} {os_error_line(e, path)}") from None


def evaluate(args) -> None:
    """Everything after the arguments: read, check outputs, run the model (if any), score, print, write."""
    if args.model:
        examples, layout = read_model_examples(args)
    else:
        examples, predictions = read_predictions(args.predictions)
        likelihood = read_likelihood(args.predictions)
    if args.compare:
        other, other_predictions = read_predictions(args.compare)
        check_same_inputs(examples, args.data or args.predictions, other, args.compare)
        other_likelihood = read_likelihood(args.compare)
    check_outputs(args)
    report = {"data": args.data or args.predictions}
    if args.model:
        likelihood, predictions, report["throughput"] = run_model(args, layout, examples)
        _write(args.out, prediction_lines(examples, predictions, likelihood), "--out")

    from swcm.tasks.bootstrap import RESAMPLES, SEED
    from swcm.tasks.degeneracy import constant_outputs
    from swcm.tasks.scores import OVERALL, compare_predictions, format_comparison, format_scores, score_predictions

    report["scores"] = score_predictions(examples, predictions, likelihood)
    print(format_scores(report["scores"]))
    constant = score_predictions(examples, constant_outputs(examples, predictions))
    report["constant"] = {"what": "every input gets the most frequent prediction of its target language",
                          "scores": constant}
    print("constant baseline (each target language's most frequent prediction, for every input): "
          + ", ".join(f"{g} chrF {s['chrf']:.2f} RL-F {s['rouge_l']['f']:.2f}" for g, s in constant.items()))
    if "throughput" in report:
        t = report["throughput"]
        print(f"likelihood of {t['sentences']} references in {t['likelihood_seconds']:.1f} s; generated in "
              f"{t['seconds']:.1f} s: {t['sentences_per_s']:.2f} sentences/s (beam {t['beam']}, batch "
              f"{t['batch_size']}, {t['device']}, {t['layout']} layout)")
    if args.compare:
        groups = compare_predictions(examples, predictions, other_predictions, likelihood=likelihood,
                                     other_likelihood=other_likelihood)
        report["compare"] = {"other": args.compare, "resamples": RESAMPLES, "seed": SEED, "groups": groups}
        print(f"\npaired bootstrap ({RESAMPLES} resamples, seed {SEED}), this run minus {args.compare}:")
        print(format_comparison(groups))
        if "nll" not in groups[OVERALL]:
            print("NLL not compared: " + ("the two systems' references were scored over different tokens"
                                          if likelihood is not None and other_likelihood is not None
                                          else "a prediction file without nll/tokens (a model scores them)"))
    if args.scores_out:
        _write(args.scores_out, json.dumps(report, ensure_ascii=False, indent=1) + "\n", "--scores-out")


def main(argv=None) -> int:
    try:
        with interrupts_raised():
            evaluate(parse_args(argv))
    except (InputError, DataError, model_dir.ModelDirError, OutputError) as e:
        print_error(str(e))
        return 2
    except WriteFailed as e:
        print_error(str(e))
        return 1
    except Interrupted as e:
        print_error("interrupted")
        return e.exit_code
    return 0


if __name__ == "__main__":
    from swcm.fast_exit import skip_final_gc

    skip_final_gc()
    sys.exit(main())
