#!/usr/bin/env bash
# Prepare a corpus on a SLURM cluster. Run it on the login node (not inside a job): it checks the inputs, the
# tokenizer and --out at once (one `error:` line if anything is wrong, nothing submitted), then submits a job array
# of TASKS datatrove tasks (one per array index) and a merge job that starts when all have succeeded, writes
# index.json and swaps the shard set into OUT. It prints the job ids and returns.
#
#   launch/slurm_prepare.sh TOKENIZER OUT PARTITION TASKS [prepare_data.py input flags ...]
#   launch/slurm_prepare.sh runs/base/swcm-init /shared/shards/mc2 cpu 256 \
#       --mono 'bo=/shared/mc2/bo/*.jsonl.gz' --mono 'ug=/shared/mc2/ug/*.jsonl.gz' ...
#
# Environment: TIME (per task, default 4:00:00), MEM_PER_CPU_GB (default 2), MAX_RUNNING (array tasks at once,
# default no limit), LOGS (default OUT.prepare-logs beside OUT), PY (default python, with swcm installed).
# Run the same command again after a failed or timed-out task: only the tasks without a completion marker are
# resubmitted (docs/data.md, "Preparing MC² on a SLURM cluster"). OUT's parent must be on a filesystem every node
# sees: the tasks write their shards into .OUT.tmp-prepare beside it.
set -euo pipefail
TOKENIZER=${1:?tokenizer directory of the model, with language tags}
OUT=${2:?output directory of the shard set}
PARTITION=${3:?SLURM partition}
TASKS=${4:?number of datatrove tasks (array size)}
shift 4
PY=${PY:-python}
EXTRA=()
[ -n "${MAX_RUNNING:-}" ] && EXTRA+=(--workers "$MAX_RUNNING")
[ -n "${LOGS:-}" ] && EXTRA+=(--logs "$LOGS")
exec $PY "$(dirname "$0")/prepare_data.py" --executor slurm --tokenizer "$TOKENIZER" --out "$OUT" \
    --partition "$PARTITION" --tasks "$TASKS" --time "${TIME:-4:00:00}" --mem-per-cpu-gb "${MEM_PER_CPU_GB:-2}" \
    "${EXTRA[@]}" "$@"
