#!/usr/bin/env python
"""Fine-tune an SWCM model on seq2seq examples (summarisation, MRC, MT) with DeepSpeed, on the pretraining loop.

    deepspeed --num_gpus 2 launch/finetune.py --config configs/finetune/ntrex_zh_bo.json \
        --deepspeed_config ds_configs/zero2.json --out runs/ft [--max-steps N] [--resume] [--set key=value ...]

Starts from `model.path` (an HF directory: an export, or `convert_checkpoint.py from-encoder` output) or from
`model.init_run` (a pretraining run's newest complete checkpoint). Train and dev data are JSONL, one example a
line: {"source", "target", "src_lang", "tgt_lang"}, or MRC {"question", "context", "answer", "lang"}. Every
`train.dev_every` steps: dev loss and beam-search chrF / ROUGE-L / BLEU; the best checkpoint by `eval.metric` is
kept, `eval.patience` evaluations without a better one stop the run; at the end RUN/hf is the best checkpoint as
an HF directory. SIGTERM / SIGINT save and exit 0 without RUN/hf or best.json; `--resume` continues and exports
at the end. Without a launcher (`python launch/finetune.py ...`) it runs as one process.
"""

import sys


def main(argv=None) -> int:
    from swcm.config import FinetuneRunConfig
    from swcm.training.entry import run
    from swcm.training.finetune_task import FinetuneTask

    return run(__doc__, "fine-tuning config JSON (configs/finetune/*.json)", FinetuneRunConfig, FinetuneTask, argv)


if __name__ == "__main__":
    from swcm.fast_exit import skip_final_gc

    skip_final_gc()
    sys.exit(main())
