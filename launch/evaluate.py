#!/usr/bin/env python
"""Generate with an exported SWCM model on a task JSONL file and score it: chrF, BLEU, ROUGE-L F/P/R per target
language and overall; optionally compare with another system's predictions (paired bootstrap).

    python launch/evaluate.py --model HF_DIR --data test.jsonl --out pred.jsonl [--beam 5] [--max-new-tokens N]
        [--batch-size B] [--scores-out scores.json] [--compare other_pred.jsonl]
    python launch/evaluate.py --predictions pred.jsonl [--scores-out scores.json] [--compare other_pred.jsonl]

Task lines: {"source","target","src_lang","tgt_lang"} or, for MRC, {"question","context","answer","lang"}.
Metrics, tokenisation and file formats: docs/evaluation.md.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from swcm.tasks import model_dir
from swcm.atomic_write import write_atomic
from swcm.tasks.jsonl import DataError, check_same_inputs, prediction_lines, read_examples, read_predictions


class InputError(ValueError):
    """Bad command-line input; printed as one `error:` line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line and exit 2, like every other bad input (not usage + error)
        raise InputError(message)


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    system = p.add_mutually_exclusive_group(required=True)
    system.add_argument("--model", help="SWCM HF directory (launch/convert_checkpoint.py to-hf or from-encoder)")
    system.add_argument("--predictions", help="score this prediction file (as --out writes) instead of generating")
    p.add_argument("--data", help="task JSONL file (with --model)")
    p.add_argument("--out", help="prediction JSONL to write, one line per input in input order (with --model)")
    p.add_argument("--beam", type=int, default=5, help="beam size (default 5)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="generated tokens per example (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per generation batch (default 16)")
    p.add_argument("--max-len", type=int, default=256, help="source length cap in tokens (default 256)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--scores-out", help="write the scores (and the comparison) to this JSON file")
    p.add_argument("--compare", help="prediction JSONL of another system on the same inputs: paired bootstrap")
    args = p.parse_args(argv)
    if args.model and not (args.data and args.out):
        raise InputError("--model needs --data and --out")
    if args.predictions and (args.data or args.out):
        raise InputError("--data and --out go with --model; --predictions scores an existing file")
    for name, least in (("beam", 1), ("max_new_tokens", 1), ("batch_size", 1), ("max_len", 4)):
        if getattr(args, name) < least:
            raise InputError(f"--{name.replace('_', '-')}: expected at least {least}, got {getattr(args, name)}")
    for path in (args.out, args.scores_out):
        if path and not Path(path).resolve().parent.is_dir():
            raise InputError(f"{path}: directory {Path(path).resolve().parent} does not exist")
    return args


def generate_predictions(args, examples) -> tuple[list[str], dict]:
    """Predictions for `examples` with the model of `args`, and a throughput record."""
    import torch

    from swcm.tasks.generation import generate

    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise InputError(f"--device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available")
    tokenizer, model = model_dir.load(args.model, str(device))
    start = time.perf_counter()
    predictions = generate(model, tokenizer, examples, num_beams=args.beam, max_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size, max_len=args.max_len)
    seconds = time.perf_counter() - start
    return predictions, {"sentences": len(examples), "seconds": seconds, "sentences_per_s": len(examples) / seconds,
                         "beam": args.beam, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                         "device": str(device)}


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        if args.model:
            examples = read_examples(args.data, model_dir.lang_codes(args.model))
        else:
            examples, predictions = read_predictions(args.predictions)
        if args.compare:
            other, other_predictions = read_predictions(args.compare)
            check_same_inputs(examples, args.data or args.predictions, other, args.compare)
        report = {"data": args.data or args.predictions}
        if args.model:
            predictions, report["throughput"] = generate_predictions(args, examples)
            write_atomic(args.out, prediction_lines(examples, predictions))
    except (InputError, DataError, model_dir.ModelDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from swcm.tasks.bootstrap import RESAMPLES, SEED
    from swcm.tasks.scores import compare_predictions, format_comparison, format_scores, score_predictions

    report["scores"] = score_predictions(examples, predictions)
    print(format_scores(report["scores"]))
    if "throughput" in report:
        t = report["throughput"]
        print(f"generated {t['sentences']} sentences in {t['seconds']:.1f} s: {t['sentences_per_s']:.2f} sentences/s "
              f"(beam {t['beam']}, batch {t['batch_size']}, {t['device']})")
    if args.compare:
        report["compare"] = {"other": args.compare, "resamples": RESAMPLES, "seed": SEED,
                             "groups": compare_predictions(examples, predictions, other_predictions)}
        print(f"\npaired bootstrap ({RESAMPLES} resamples, seed {SEED}), this run minus {args.compare}:")
        print(format_comparison(report["compare"]["groups"]))
    if args.scores_out:
        write_atomic(args.scores_out, json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
