#!/usr/bin/env python
"""Generate with an exported SWCM directory: encoder input `<s> <src> x </s>`, output forced to `<tgt>`.

    python launch/generate.py --model runs/demo/hf --src-lang zh --tgt-lang bo --text "..." [--num-beams 5]
    python launch/generate.py --model DIR --src-lang zh --tgt-lang bo --input FILE   # one text per line
"""

import argparse
import json
import sys


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

    import torch
    from transformers import AutoModelForSeq2SeqLM

    from swcm.tokenization import load_tokenizer
    from swcm.seq2seq_inputs import build_seq2seq_inputs

    texts = args.text or open(args.input, encoding="utf-8").read().splitlines()
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model, trust_remote_code=True).eval()
    if args.tgt_lang not in model.config.lang_token_ids:
        sys.exit(f"error: --tgt-lang {args.tgt_lang!r} has no tag in {args.model} "
                 f"(have {', '.join(model.config.lang_token_ids)})")
    try:
        batch = build_seq2seq_inputs(tokenizer, texts, None, args.src_lang, args.tgt_lang, max_len=args.max_len)
    except ValueError as e:
        sys.exit(f"error: {e}")
    with torch.no_grad():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             decoder_input_ids=batch["decoder_input_ids"], num_beams=args.num_beams,
                             max_new_tokens=args.max_new_tokens)
    prefix = batch["decoder_input_ids"].shape[1]
    for text, ids in zip(texts, out):
        print(json.dumps({"source": text, "output": tokenizer.decode(ids[prefix:], skip_special_tokens=True)},
                         ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
