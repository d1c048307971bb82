#!/usr/bin/env bash
# Multi-node pretraining under SLURM: one DeepSpeed launcher per node (no ssh needed), ranks = nodes x GPUs.
#
#   sbatch --nodes 4 --gpus-per-node 8 launch/slurm_pretrain.sh configs/xlm-swcm-base.json ds_configs/zero2.json runs/base
#
# SLURM sends SIGTERM to every task on preemption or time-out: each rank finishes its step, saves a
# checkpoint and exits 0; resubmitting the same command continues with --resume.
#SBATCH --job-name=swcm-pretrain
#SBATCH --ntasks-per-node=1
#SBATCH --signal=TERM@120
#SBATCH --open-mode=append
set -euo pipefail
CONFIG=${1:?run config JSON}
DS_CONFIG=${2:?DeepSpeed config JSON}
OUT=${3:?run directory}
shift 3
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
HOSTFILE=$(mktemp)
for h in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do echo "$h slots=$GPUS_PER_NODE"; done > "$HOSTFILE"
RESUME=()
[ -d "$OUT/checkpoints" ] && RESUME=(--resume)
srun --kill-on-bad-exit=1 bash -c "deepspeed --hostfile $HOSTFILE --no_ssh --node_rank \$SLURM_NODEID \
    --master_addr $MASTER_ADDR --master_port $MASTER_PORT launch/pretrain.py \
    --config $CONFIG --deepspeed_config $DS_CONFIG --out $OUT ${RESUME[*]} $*"
