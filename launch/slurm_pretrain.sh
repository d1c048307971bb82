#!/usr/bin/env bash
# Multi-node pretraining under SLURM: one swcm-launch per node (no ssh), ranks = nodes x GPUs.
#
#   sbatch --nodes 4 --gpus-per-node 8 launch/slurm_pretrain.sh configs/xlm-swcm-base.json ds_configs/zero2.json runs/base
#
# On preemption, time-out (--signal=TERM@120) or scancel, SLURM sends SIGTERM to every process of the step: each
# rank finishes its step, saves a checkpoint and exits 0, and each swcm-launch exits 0 after its ranks, so srun
# records success and --kill-on-bad-exit never cuts another node's save short. DeepSpeed's own launcher exits at
# once (-15) or with 1 on SIGTERM, which is why it is not used here (see swcm/launcher.py). Resubmitting the same
# command continues with --resume. KillWait (SLURM's grace before SIGKILL) must cover a checkpoint save.
#SBATCH --job-name=swcm-pretrain
#SBATCH --ntasks-per-node=1
#SBATCH --signal=TERM@120
#SBATCH --open-mode=append
set -euo pipefail
CONFIG=${1:?run config JSON}
DS_CONFIG=${2:?DeepSpeed config JSON}
OUT=${3:?run directory}
shift 3
PY=${PY:-python}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
HOSTFILE=$OUT/hostfile.$SLURM_JOB_ID
mkdir -p "$OUT"
for h in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do echo "$h slots=$GPUS_PER_NODE"; done > "$HOSTFILE"
RESUME=()
[ -d "$OUT/checkpoints" ] && RESUME=(--resume)
srun --kill-on-bad-exit=1 bash -c "exec $PY -m swcm.launcher --hostfile $HOSTFILE --node_rank \$SLURM_NODEID \
    --master_addr $MASTER_ADDR --master_port $MASTER_PORT launch/pretrain.py \
    --config $CONFIG --deepspeed_config $DS_CONFIG --out $OUT ${RESUME[*]} $*"
