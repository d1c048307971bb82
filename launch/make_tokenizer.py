#!/usr/bin/env python
"""Make the tokenizer an encoder pretraining run and its shards share: an XLM-R sentencepiece tokenizer trained on
your text, or an existing XLM-R / CINO tokenizer, with the language tags (`<bo>`, `<zh>`, ...) added.

    python launch/make_tokenizer.py --text data/demo/mono/bo.txt data/demo/mono/zh.txt ... --vocab-size 8000 \
        --out runs/enc/tokenizer
    python launch/make_tokenizer.py --from hfl/cino-base-v2-dir --out runs/enc/tokenizer

Then `prepare_data.py --tokenizer` that directory, and point `pretrain_encoder.py`'s `model.tokenizer` (from
scratch) at it; continuing from `model.path` adds the same tags itself.
"""

import argparse
import logging
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", nargs="+", help="text files to train a sentencepiece (unigram) model on")
    source.add_argument("--from", dest="from_dir", help="an XLM-R / CINO directory whose tokenizer to extend")
    p.add_argument("--out", required=True, help="output tokenizer directory (replaced)")
    p.add_argument("--vocab-size", type=int, default=8000, help="sentencepiece pieces (with --text)")
    p.add_argument("--max-sentences", type=int, default=50_000, help="lines sentencepiece samples (with --text)")
    p.add_argument("--lang-codes", default="bo,kk,mn,ug,zh", help="language tags to add, comma-separated")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from swcm.tokenization import add_language_tags, load_tokenizer, train_sentencepiece_tokenizer

    out = Path(args.out)
    for f in args.text or []:
        if not Path(f).is_file():
            print(f"error: --text {f}: file not found", file=sys.stderr)
            return 2
    if args.from_dir and not (Path(args.from_dir) / "tokenizer_config.json").is_file():
        print(f"error: --from {args.from_dir}: no tokenizer_config.json (not a tokenizer directory)", file=sys.stderr)
        return 2
    if args.vocab_size < 100:
        print(f"error: --vocab-size {args.vocab_size}: expected at least 100", file=sys.stderr)
        return 2
    if args.text:
        try:
            train_sentencepiece_tokenizer(args.text, out, vocab_size=args.vocab_size, max_sentences=args.max_sentences)
        except RuntimeError as e:   # sentencepiece: e.g. a vocabulary smaller than the characters it must hold
            print(f"error: --vocab-size {args.vocab_size}: sentencepiece failed: {str(e).splitlines()[-1]}",
                  file=sys.stderr)
            return 2
        tokenizer = load_tokenizer(out)
    else:
        tokenizer = load_tokenizer(args.from_dir)
    tags = add_language_tags(tokenizer, [c.strip() for c in args.lang_codes.split(",") if c.strip()])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    logging.info("wrote %s: %d tokens, language tags %s", out, len(tokenizer), tags)
    return 0


if __name__ == "__main__":
    sys.exit(main())
