#!/usr/bin/env python
"""Make the demo's stand-in for XLM-R / CINO: a sentencepiece XLM-R tokenizer trained on data/demo and a
small randomly initialised XLM-R encoder saved with `save_pretrained` (no model hub is needed).

    python launch/make_demo_encoder.py --out runs/demo/encoder [--vocab-size 8000] [--layers 4] [--hidden 128]
"""

import argparse
import logging
import tempfile
from pathlib import Path

from swcm.assets import build_demo_tokenizer, build_tiny_xlmr


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output HF directory (config, safetensors, tokenizer)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"error: {out} exists; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        logging.info("training a %d-piece sentencepiece tokenizer on data/demo", args.vocab_size)
        build_demo_tokenizer(Path(tmp) / "tokenizer", vocab_size=args.vocab_size)
        staging = Path(tmp) / "encoder"
        build_tiny_xlmr(staging, Path(tmp) / "tokenizer", num_hidden_layers=args.layers, hidden_size=args.hidden,
                        num_attention_heads=args.heads, intermediate_size=args.intermediate, seed=args.seed)
        staging.rename(out)
    logging.info("wrote %s", out)


if __name__ == "__main__":
    from swcm.fast_exit import skip_final_gc

    skip_final_gc()
    main()
