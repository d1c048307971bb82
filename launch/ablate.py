#!/usr/bin/env python
"""The paper's ablations (Tables 3-5) in miniature, plus the Hugging Face warm start, on the demo corpus:

    python launch/ablate.py [--config configs/ablations/mini.json] [--smoke] --out DIR [--set key=value ...]

From one small XLM-R encoder pretrained here with masked LM, every row gets the same seq2seq pretraining budget and
the same fine-tuning on the NTREX zh->bo/kk/mn/ug train pairs, and is scored on the dev pairs by launch/evaluate.py
--model, SWCM and the HF warm start alike: held-out NLL first (the primary metric), then chrF and ROUGE-L from beam
search, degeneracy diagnostics, a constant-output row; paired bootstrap against SWCM. The default config runs SWCM,
the random decoder and the HF EncoderDecoderModel warm start with 3 seeds each; configs/ablations/full.json adds
BASE-A, BASE-B, -MT, -DAE and the pretrained warm start. Writes DIR/results.md, results.csv, runs.csv and
results.png.
Started again on the same DIR it continues with the stages that are not done (a killed run loses at most the
stages in progress, which resume from their checkpoints). --smoke is configs/ablations/smoke.json: every stage,
tiny. What each row is and how the warm start is trained: docs/ablations.md.
"""

import argparse
import logging
import sys


def main(argv=None) -> int:
    from swcm.ablation.run import DEFAULT_CONFIG, SMOKE_CONFIG, ablate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--config", default=None, help=f"ablation config (default {DEFAULT_CONFIG.name})")
    which.add_argument("--smoke", action="store_true", help=f"the CI size ({SMOKE_CONFIG.name})")
    p.add_argument("--out", required=True, help="output directory (created; an existing one is continued)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set finetune.max_steps=100 (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = SMOKE_CONFIG if args.smoke else (args.config or DEFAULT_CONFIG)
    return ablate(str(config), args.overrides, args.out)


if __name__ == "__main__":
    from swcm.fast_exit import skip_final_gc

    skip_final_gc()
    sys.exit(main())
