#!/usr/bin/env python
"""Pretrain an XLM-R encoder with the masked-language-model objective (BERT / XLM-R masking) on the pretraining
shards, with DeepSpeed -- from scratch or continued from a Hugging Face XLM-R / CINO directory.

    python launch/make_tokenizer.py --text corpus/*.txt --vocab-size 8000 --out runs/enc/tokenizer   # from scratch
    python launch/prepare_data.py --tokenizer runs/enc/tokenizer --mono bo=... --out runs/enc/shards/train
    deepspeed --num_gpus 2 launch/pretrain_encoder.py --config configs/encoder/demo.json \
        --deepspeed_config ds_configs/zero2.json --out runs/enc/run [--max-steps N] [--resume] [--set key=value ...]
    python launch/convert_checkpoint.py to-hf --run runs/enc/run --out runs/enc/hf    # an XLM-R directory

`model.tokenizer` starts from scratch (a random XLM-R of the configured shape); `model.path` continues from an
XLM-R directory (the language tags are added to its vocabulary). Checkpoints, --resume, SIGTERM/SIGINT and
TensorBoard (train/loss, train/loss_lang_<code>, dev/loss) behave as in launch/pretrain.py.
"""

import sys


def main(argv=None) -> int:
    from swcm.training.entry import run
    from swcm.training.mlm_task import MLMRunConfig, MLMTask

    return run(__doc__, "encoder run config JSON (configs/encoder/*.json)", MLMRunConfig, MLMTask, argv)


if __name__ == "__main__":
    from swcm.fast_exit import skip_final_gc

    skip_final_gc()
    sys.exit(main())
