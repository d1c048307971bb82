#!/usr/bin/env bash
# The embedded default, end to end on this machine (2 CPU ranks):
#   demo corpus -> tokenizer + stand-in XLM-R encoder -> SWCM init (from-encoder) -> webdataset shards ->
#   DeepSpeed pretraining (ZeRO-2, 2 ranks) -> checkpoint -> HF export -> a generation ->
#   NTREX zh->bo task files -> dev scores of the export -> DeepSpeed fine-tuning -> dev scores after, compared.
# Everything lands in runs/demo/ (or $OUT); re-running reuses finished stages (delete it to start over).
# A smaller run of the same pipeline (tests/test_demo.py): PRETRAIN_SET / FINETUNE_SET add `--set k=v` overrides to
# the two DeepSpeed runs, EVAL_SET options to the two evaluations, DEV_PAIRS keeps the first N NTREX dev pairs
# (0 = all 259).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DS=${DS:-.venv/bin/deepspeed}
OUT=${OUT:-runs/demo}
PRETRAIN_SET=${PRETRAIN_SET:-}
FINETUNE_SET=${FINETUNE_SET:-}
EVAL_SET=${EVAL_SET:-}
DEV_PAIRS=${DEV_PAIRS:-0}
D=data/demo
NTREX=$D/parallel/ntrex128/ntrex128
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p $OUT
start=$(date +%s)
# Ctrl-C or SIGTERM: stop here, whatever the current stage's exit status (a training run stopped by a signal saves
# and exits 0, and the next stage would then use what it has not finished); running the demo again resumes it.
trap 'echo "demo: interrupted; run it again to resume"; exit 130' INT
trap 'echo "demo: terminated; run it again to resume"; exit 143' TERM

if [ ! -d $OUT/encoder ]; then
  echo "== 1/10 stand-in encoder: sentencepiece tokenizer on the demo corpus + a small random XLM-R"
  $PY launch/make_demo_encoder.py --out $OUT/encoder
fi
if [ ! -d $OUT/swcm-init ]; then
  echo "== 2/10 from-encoder: XLM-SWCM decoder built from the encoder's weights (X=3)"
  $PY launch/convert_checkpoint.py from-encoder --encoder $OUT/encoder --out $OUT/swcm-init --normal-layer-every 3
fi
if [ ! -f $OUT/shards/train/index.json ]; then
  echo "== 3/10 shards: mono bo/kk/ug/zh/mn + NTREX zh<->x parallel"
  $PY launch/prepare_data.py --tokenizer $OUT/swcm-init --out $OUT/shards/train --max-len 128 \
    --mono bo=$D/mono/bo.txt,$D/mono/bo_speech.txt --mono kk=$D/mono/kk.txt \
    --mono ug=$D/mono/ug.txt,$D/mono/ug_proverbs.txt --mono zh=$D/mono/zh.txt --mono mn=$NTREX.train.mn \
    --parallel zh-bo=$NTREX.train.zh,$NTREX.train.bo --parallel zh-kk=$NTREX.train.zh,$NTREX.train.kk \
    --parallel zh-mn=$NTREX.train.zh,$NTREX.train.mn --parallel zh-ug=$NTREX.train.zh,$NTREX.train.ug
  $PY launch/prepare_data.py --tokenizer $OUT/swcm-init --out $OUT/shards/dev --max-len 128 \
    --mono bo=$NTREX.dev.bo --mono kk=$NTREX.dev.kk --mono ug=$NTREX.dev.ug --mono zh=$NTREX.dev.zh \
    --mono mn=$NTREX.dev.mn \
    --parallel zh-bo=$NTREX.dev.zh,$NTREX.dev.bo --parallel zh-kk=$NTREX.dev.zh,$NTREX.dev.kk \
    --parallel zh-mn=$NTREX.dev.zh,$NTREX.dev.mn --parallel zh-ug=$NTREX.dev.zh,$NTREX.dev.ug
fi
# The export appears (atomically) only once pretraining has finished: then both stages are done.
if [ ! -f $OUT/hf/config.json ]; then
  echo "== 4/10 pretraining: deepspeed, 2 CPU ranks, ZeRO-2 (resumes if a checkpoint exists)"
  $DS --num_gpus 2 launch/pretrain.py --config configs/demo.json --deepspeed_config ds_configs/zero2.json \
    --out $OUT/run --resume \
    --set model.path=$OUT/swcm-init --set data.shards=$OUT/shards/train --set data.dev_shards=$OUT/shards/dev \
    $PRETRAIN_SET
  echo "== 5/10 export: newest checkpoint -> HF directory (safetensors, remote code), verified by reloading"
  $PY launch/convert_checkpoint.py to-hf --run $OUT/run --out $OUT/hf --overwrite
fi
echo "== 6/10 generation: zh -> bo with beam search from the exported directory"
$PY launch/generate.py --model $OUT/hf --src-lang zh --tgt-lang bo --num-beams 4 \
  --text "$(head -n 1 $NTREX.dev.zh)"
TASKS=$OUT/tasks/ntrex_zh_bo
if [ ! -f $TASKS.dev.jsonl ]; then
  echo "== 7/10 task files: NTREX zh -> bo train and dev pairs as JSONL"
  $PY launch/make_task_jsonl.py parallel --src $NTREX.train.zh --tgt $NTREX.train.bo --src-lang zh --tgt-lang bo \
    --out $TASKS.train.jsonl
  $PY launch/make_task_jsonl.py parallel --src $NTREX.dev.zh --tgt $NTREX.dev.bo --src-lang zh --tgt-lang bo \
    --out $TASKS.dev.jsonl --limit $DEV_PAIRS
fi
EVAL="--data $TASKS.dev.jsonl --beam 5 --max-new-tokens 128 $EVAL_SET"
mkdir -p $OUT/eval
if [ ! -f $OUT/eval/before.scores.json ]; then
  echo "== 8/10 evaluate the export on the dev pairs (before fine-tuning): chrF, BLEU, ROUGE-L"
  $PY launch/evaluate.py --model $OUT/hf $EVAL --out $OUT/eval/before.jsonl --scores-out $OUT/eval/before.scores.json
fi
if [ ! -f $OUT/ft/best.json ]; then
  echo "== 9/10 fine-tuning: deepspeed, 2 CPU ranks, ZeRO-2, on the train pairs (resumes if a checkpoint exists)"
  $DS --num_gpus 2 launch/finetune.py --config configs/finetune/ntrex_zh_bo.json \
    --deepspeed_config ds_configs/zero2.json --out $OUT/ft --resume \
    --set model.path=$OUT/hf --set data.train=$TASKS.train.jsonl --set data.dev=$TASKS.dev.jsonl $FINETUNE_SET
fi
if [ ! -f $OUT/eval/after.scores.json ]; then
  echo "== 10/10 evaluate the fine-tuned model (its best dev checkpoint), paired bootstrap against step 8"
  $PY launch/evaluate.py --model $OUT/ft/hf $EVAL --out $OUT/eval/after.jsonl --scores-out $OUT/eval/after.scores.json \
    --compare $OUT/eval/before.jsonl
fi
echo "demo finished in $(( $(date +%s) - start )) s; TensorBoard: .venv/bin/tensorboard --logdir $OUT"
