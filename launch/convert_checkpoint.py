#!/usr/bin/env python
"""Checkpoint conversions for swcm, one subcommand each:

    python launch/convert_checkpoint.py from-encoder --encoder DIR --out DIR [--normal-layer-every 3]
        [--decoder-init encoder|random|duplicate] [--untie-lm-head] [--lang-codes bo,kk,mn,ug,zh]
        [--overwrite] [--seed 0] [--dtype float32|bfloat16] [--license ID]
        [--trim-vocab CORPUS... [--trim-min-count N]]
    python launch/convert_checkpoint.py trim-vocab --model DIR --corpus FILES_OR_SHARD_DIRS... --out DIR
        [--min-count 1] [--keep-characters] [--overwrite]
    python launch/convert_checkpoint.py to-hf --run RUN_DIR --out DIR [--step N] [--dtype float32|bfloat16|float16]
        [--overwrite] [--no-verify] [--license ID]
    python launch/convert_checkpoint.py universal --run RUN_DIR --out DIR [--step N] [--overwrite]

Each subcommand parses its flags and calls one function in swcm/convert/. Bad input (including a checkpoint
with a missing or truncated file, or an --out that is, holds or lies inside the input) ends with a one-line
`error: ...` on stderr and exit status 2, and nothing is written; a read-only or full --out is `error: PATH:
reason` (status 1); SIGINT / SIGTERM is `error: interrupted` (status 130 / 143) with no temporary left behind.
--overwrite replaces only a directory swcm wrote, never a foreign one.
"""

import argparse
import logging
import sys

LICENSE_HELP = ("Hub licence id for the model card's metadata (mit, apache-2.0, cc-by-nc-4.0, ...). Default other: "
                "the weights inherit the encoder's licence (XLM-R: MIT, CINO: Apache-2.0) and the training data's, "
                "which the converter cannot know")


def add_from_encoder(subparsers) -> None:
    p = subparsers.add_parser(
        "from-encoder", help="XLM-R / CINO encoder dir -> initialised XLM-SWCM dir",
        description="Build an XLM-SWCM Hugging Face directory from an XLM-R / CINO encoder directory: the "
                    "encoder's weights, a decoder initialised from them, language tags added to the tokenizer.")
    p.add_argument("--encoder", required=True, help="HF XLM-R / CINO directory (config.json, weights, tokenizer)")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--normal-layer-every", type=int, default=3, metavar="X",
                   help="insert a randomly initialised normal decoder layer after every X custom layers "
                        "(0: none, the paper's BASE-A; default 3, the released model)")
    p.add_argument("--decoder-init", choices=("encoder", "random", "duplicate"), default="encoder",
                   help="encoder: XLM-SWCM; random: no weight sharing (-WS / Cino-Transformer); "
                        "duplicate: normal layers copy the custom layer before them (BASE-B)")
    p.add_argument("--untie-lm-head", action="store_true",
                   help="separate, randomly initialised LM head instead of the tied word embedding")
    p.add_argument("--lang-codes", default="bo,kk,mn,ug,zh", help="language tags to add, comma-separated")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that swcm wrote")
    p.add_argument("--seed", type=int, default=0, help="seed for the randomly initialised parts")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="dtype of the saved weights")
    p.add_argument("--license", default="other", help=LICENSE_HELP)
    p.add_argument("--trim-vocab", nargs="+", metavar="CORPUS", default=None,
                   help="trim the vocabulary to the pieces these text files / shard directories use (as trim-vocab "
                        "does), so that pretraining starts trimmed; docs/vocab-trimming.md")
    p.add_argument("--trim-min-count", type=int, default=1, metavar="N",
                   help="with --trim-vocab: keep pieces used at least N times (default 1)")
    p.set_defaults(run=run_from_encoder)


def run_from_encoder(args) -> None:
    from swcm.convert.from_encoder import convert_from_encoder

    codes = tuple(c.strip() for c in args.lang_codes.split(",") if c.strip())
    convert_from_encoder(args.encoder, args.out, normal_layer_every=args.normal_layer_every,
                         decoder_init=args.decoder_init, tie_word_embeddings=not args.untie_lm_head,
                         lang_codes=codes, overwrite=args.overwrite, seed=args.seed, dtype=args.dtype,
                         license=args.license, trim_corpus=args.trim_vocab, trim_min_count=args.trim_min_count)


def add_trim_vocab(subparsers) -> None:
    p = subparsers.add_parser(
        "trim-vocab", help="keep only the vocabulary a corpus uses (encoder, SWCM or export dir -> same kind)",
        description="Keep the special tokens, the language tags and the pieces the corpus's tokenisation uses at "
                    "least --min-count times; write a directory of the same kind with "
                    "the embedding / LM-head rows selected, the tokenizer rewritten (plain AutoTokenizer gives the "
                    "new ids) and trim_map.json (old id of every new id). Exact on what is kept: the corpus "
                    "tokenises to the mapped ids and the logits at kept ids are unchanged. See docs/vocab-trimming.md.")
    p.add_argument("--model", required=True, help="HF directory: XLM-R / CINO encoder, SWCM (from-encoder) or export")
    p.add_argument("--corpus", required=True, nargs="+", metavar="FILE_OR_SHARDS",
                   help="text files (one document per line) and/or shard directories from prepare_data.py")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--min-count", type=int, default=1, metavar="N",
                   help="keep pieces used at least N times (default 1: exact on the whole corpus)")
    p.add_argument("--keep-characters", action="store_true",
                   help="also keep every one-character piece, used or not, so that any text the original vocabulary "
                        "covered still tokenises without <unk> (larger: CJK characters are many)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that swcm wrote")
    p.set_defaults(run=run_trim_vocab)


def run_trim_vocab(args) -> None:
    from swcm.convert.trim_vocab import trim_vocab

    trim_vocab(args.model, args.corpus, args.out, min_count=args.min_count,
               keep_characters=args.keep_characters, overwrite=args.overwrite)


def add_to_hf(subparsers) -> None:
    p = subparsers.add_parser(
        "to-hf", help="DeepSpeed pretraining run (any ZeRO stage) -> HF directory",
        description="Consolidate a run's newest complete checkpoint (or --step) and write a Hugging Face directory "
                    "(safetensors, tokenizer, modeling file, model card), verified by reloading it in a fresh "
                    "process that cannot import swcm.")
    p.add_argument("--run", dest="run_dir", required=True, help="the --out directory of launch/pretrain.py")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest complete one)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that swcm wrote")
    p.add_argument("--no-verify", action="store_true", help="skip the fresh-process logits check")
    p.add_argument("--license", default="other", help=LICENSE_HELP)
    p.set_defaults(run=run_to_hf)


def run_to_hf(args) -> None:
    from swcm.convert.encoder_to_hf import export_encoder_to_hf, is_encoder_run
    from swcm.convert.to_hf import export_to_hf

    if is_encoder_run(args.run_dir):   # a launch/pretrain_encoder.py run: an XLM-R encoder directory
        export_encoder_to_hf(args.run_dir, args.out, step=args.step, dtype=args.dtype, overwrite=args.overwrite,
                             verify=not args.no_verify)
        return

    export_to_hf(args.run_dir, args.out, step=args.step, dtype=args.dtype, overwrite=args.overwrite,
                 verify=not args.no_verify, license=args.license)


def add_universal(subparsers) -> None:
    p = subparsers.add_parser(
        "universal", help="DeepSpeed run (ZeRO 1-3) -> universal checkpoint, to resume at another world size/stage",
        description="Convert a run's newest complete checkpoint (or --step) with DeepSpeed's ds_to_universal into a "
                    "universal checkpoint that `pretrain.py --resume-from DIR` loads at any world size and ZeRO "
                    "stage 1-3, with the data position and the model's config and tokenizer.")
    p.add_argument("--run", dest="run_dir", required=True, help="the --out directory of a training run")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest complete one)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that swcm wrote")
    p.set_defaults(run=run_universal)


def run_universal(args) -> None:
    from swcm.convert.universal import to_universal

    to_universal(args.run_dir, args.out, step=args.step, overwrite=args.overwrite)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_from_encoder(subparsers)
    add_to_hf(subparsers)
    add_universal(subparsers)
    add_trim_vocab(subparsers)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from swcm.cli_exit import run_reporting
    from swcm.convert import ConversionError
    from swcm.output_guard import OutputError

    return run_reporting(lambda: args.run(args), (ConversionError, OutputError))


if __name__ == "__main__":
    from swcm.fast_exit import skip_final_gc

    skip_final_gc()
    sys.exit(main())
