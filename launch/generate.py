#!/usr/bin/env python
"""Generate with an exported SWCM directory: encoder input `<s> <src> x </s>`, output forced to `<tgt>`.

    python launch/generate.py --model runs/demo/hf --src-lang zh --tgt-lang bo --text "..." [--num-beams 5]
    python launch/generate.py --model DIR --src-lang zh --tgt-lang bo --input FILE   # one text per line

Bad input (a setting out of range, an empty --text, more beams than memory allows, an --input that is unreadable or
not UTF-8, a --model that is not an exported SWCM directory, an unknown language) ends with one `error: ...` line on
stderr and exit status 2; SIGINT / SIGTERM with `error: interrupted` and status 130 / 143. A reader that
goes away (`| head -1`) ends it quietly with status 141, as SIGPIPE ends `yes | head`.
"""

import argparse
import json
import sys
from pathlib import Path

from swcm.closed_pipe import closed_pipe_status
from swcm.cli_exit import Interrupted, interrupts_raised, print_error


class UsageError(Exception):
    """Bad input to generate.py; the message names the argument or file and what was expected."""


def _positive(flag: str, value: int) -> None:
    if value < 1:
        raise UsageError(f"{flag} {value}: expected an integer >= 1")


def read_texts(path: str) -> list[str]:
    """The lines of a UTF-8 file; UsageError naming the file (and line) if it is unreadable, not UTF-8, or
    holds no text."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"--input {path}: cannot read ({e.strerror})") from None
    texts = []
    for i, line in enumerate(raw.splitlines(), start=1):
        try:
            texts.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise UsageError(f"--input {path}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not any(t.strip() for t in texts):
        raise UsageError(f"--input {path}: no text (expected one source text per line)")
    return texts


def check_model_dir(path: str) -> None:
    """UsageError unless `path` is an SWCM directory (from convert_checkpoint.py or an export)."""
    from swcm.tasks.model_dir import ModelDirError, lang_codes

    try:
        lang_codes(path)
    except ModelDirError as e:
        raise UsageError(f"--model {path}: {e} (expected an HF directory from convert_checkpoint.py)") from None


def check_beams(args, texts: list[str]) -> None:
    """UsageError when --num-beams exceeds the vocabulary or the memory the beam search needs (all texts in one
    batch: swcm/tasks/beam_budget.py) exceeds half the memory available now."""
    import psutil

    from swcm.tasks.beam_budget import beam_search_bytes

    fields = json.loads((Path(args.model) / "config.json").read_text(encoding="utf-8"))
    if args.num_beams > fields["vocab_size"]:
        raise UsageError(f"--num-beams {args.num_beams}: more beams than the model has tokens ({fields['vocab_size']})")
    # Sources are at most --max-len tokens; their real length is not known before tokenising (which needs the
    # tokenizer): UTF-8 bytes + 3 bound it, as a piece holds at least one character.
    source_len = min(args.max_len, max(len(t.encode("utf-8")) for t in texts) + 3)
    need = beam_search_bytes(fields, len(texts), args.num_beams, source_len, args.max_new_tokens)
    available = psutil.virtual_memory().available
    if need > available // 2:
        raise UsageError(f"--num-beams {args.num_beams}: the beam search over {len(texts)} text(s) would need about "
                         f"{need / 2**30:.1f} GiB, more than half the {available / 2**30:.1f} GiB available; use "
                         "fewer beams or fewer texts per call")


def generate(args) -> None:
    """Print one JSON line {"source", "output"} per source text."""
    _positive("--num-beams", args.num_beams)
    _positive("--max-new-tokens", args.max_new_tokens)
    if args.text and not all(t.strip() for t in args.text):
        raise UsageError("--text: empty text (expected a source text to translate)")
    texts = args.text or read_texts(args.input)
    check_model_dir(args.model)
    check_beams(args, texts)

    import torch
    from transformers import AutoModelForSeq2SeqLM

    from swcm.seq2seq_inputs import build_seq2seq_inputs
    from swcm.tokenization import load_tokenizer

    try:
        tokenizer = load_tokenizer(args.model)
        model = AutoModelForSeq2SeqLM.from_pretrained(args.model, trust_remote_code=True).eval()
    except (OSError, ValueError) as e:
        raise UsageError(f"--model {args.model}: cannot load the model or tokenizer ({e})") from None
    for flag, code in (("--src-lang", args.src_lang), ("--tgt-lang", args.tgt_lang)):
        if code not in model.config.lang_token_ids:
            raise UsageError(f"{flag} {code!r} has no tag in {args.model} "
                             f"(have {', '.join(model.config.lang_token_ids)})")
    try:
        batch = build_seq2seq_inputs(tokenizer, texts, None, args.src_lang, args.tgt_lang, max_len=args.max_len)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with torch.no_grad():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             decoder_input_ids=batch["decoder_input_ids"], num_beams=args.num_beams,
                             max_new_tokens=args.max_new_tokens)
    prefix = batch["decoder_input_ids"].shape[1]
    for text, ids in zip(texts, out):
        print(json.dumps({"source": text, "output": tokenizer.decode(ids[prefix:], skip_special_tokens=True)},
                         ensure_ascii=False))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF directory written by convert_checkpoint.py")
    p.add_argument("--src-lang", required=True)
    p.add_argument("--tgt-lang", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="source text (repeatable)")
    src.add_argument("--input", help="UTF-8 file, one source text per line")
    p.add_argument("--num-beams", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-len", type=int, default=256, help="source length cap in tokens")
    args = p.parse_args(argv)
    try:
        with interrupts_raised():
            generate(args)
            sys.stdout.flush()
    except UsageError as e:
        print_error(str(e))
        return 2
    except BrokenPipeError:
        return closed_pipe_status()
    except Interrupted as e:
        print_error("interrupted")
        return e.exit_code
    return 0


if __name__ == "__main__":
    from swcm.fast_exit import skip_final_gc

    skip_final_gc()
    sys.exit(main())
