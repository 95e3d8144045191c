#!/usr/bin/env bash
# Prepare training shards on a SLURM cluster: a job array of N tasks, task k running
# `python -m mars_jax.data.prepare --num_workers=N --worker_index=k` (it writes its own shards,
# s % N == k), then one dependent job running `prepare --finalize`, which writes manifest.json
# once every shard is done. Resubmitting the same command redoes only unfinished shards.
set -euo pipefail

SCRIPT_NAME=$(basename "$0")
LAUNCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(cd "${LAUNCH_DIR}/.." && pwd)
# shellcheck source=launch/common.sh
source "${LAUNCH_DIR}/common.sh"

usage() {
  cat <<EOF
Usage: ${SCRIPT_NAME} --stage=S --source=SOURCE --out=OUT --vq=VQ_DIR --workers=N [options]
         [-- PREPARE_ARGS...]

Submit a SLURM job array of N tasks, task k running 'python3 -m mars_jax.data.prepare
--stage=S --source=SOURCE --out=OUT --vq=VQ_DIR --num_workers=N --worker_index=k
PREPARE_ARGS...', and a job that runs 'prepare --finalize --out=OUT' after all of them
succeeded. OUT (and SOURCE, VQ_DIR) must be on a file system every node sees.

Required:
  --stage=S                training stage whose shards to write: 1, 2 or 3
  --source=SOURCE          folder | *.jsonl | *.csv | tfds:NAME[:SPLIT]
  --out=OUT                output directory (absolute path on a shared file system)
  --vq=VQ_DIR              VQ-GAN directory
  --workers=N              array tasks (shards are split s % N == k)

Options:
  --max-parallel=P         at most P tasks at once (default: all)
  --cpus-per-task=C        CPUs per task (default: 8)
  --time=T                 time limit per task, e.g. 12:00:00 (default: the partition's)
  --partition=P            SLURM partition
  --account=A              SLURM account
  --job-name=NAME          job name (default: mars_prepare)
  --log-dir=DIR            where SLURM writes NAME-JOBID_TASK.out (default: current directory)
  --venv=DIR               Python environment to activate in every task
  --dry-run                print the sbatch commands instead of submitting
  -h, --help               show this help
EOF
}

STAGE="" SOURCE="" OUT="" VQ="" WORKERS="" MAX_PARALLEL="" CPUS=8 TIME="" PARTITION=""
ACCOUNT="" JOB_NAME=mars_prepare LOG_DIR="" VENV=""
PREPARE_ARGS=()

while (($#)); do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --stage) STAGE=$(value_of "$@"); shift 2 ;;
    --source) SOURCE=$(value_of "$@"); shift 2 ;;
    --out) OUT=$(value_of "$@"); shift 2 ;;
    --vq) VQ=$(value_of "$@"); shift 2 ;;
    --workers) WORKERS=$(value_of "$@"); shift 2 ;;
    --max-parallel) MAX_PARALLEL=$(value_of "$@"); shift 2 ;;
    --cpus-per-task) CPUS=$(value_of "$@"); shift 2 ;;
    --time) TIME=$(value_of "$@"); shift 2 ;;
    --partition) PARTITION=$(value_of "$@"); shift 2 ;;
    --account) ACCOUNT=$(value_of "$@"); shift 2 ;;
    --job-name) JOB_NAME=$(value_of "$@"); shift 2 ;;
    --log-dir) LOG_DIR=$(value_of "$@"); shift 2 ;;
    --venv) VENV=$(value_of "$@"); shift 2 ;;
    --) shift; PREPARE_ARGS=("$@"); break ;;
    *) die "unknown option '$1' (prepare flags go after '--'; see --help)" ;;
  esac
done

require "$STAGE" --stage
require "$SOURCE" --source
require "$OUT" --out
require "$VQ" --vq
require "$WORKERS" --workers
[[ "$STAGE" =~ ^[123]$ ]] || die "--stage must be 1, 2 or 3, got '$STAGE'"
require_int "$WORKERS" --workers
require_int "$CPUS" --cpus-per-task
[[ -z "$MAX_PARALLEL" ]] || require_int "$MAX_PARALLEL" --max-parallel
[[ "$OUT" == /* ]] || die "--out '$OUT' must be an absolute path on a shared file system"

PY=python3
ACTIVATE=""
[[ -n "$VENV" ]] && ACTIVATE="source $(shell_quote "${VENV%/}/bin/activate") && "
# The worker index is SLURM's, expanded in the task (hence not quoted here).
WORKER="${ACTIVATE}$(shell_quote "$PY" -m mars_jax.data.prepare --stage="$STAGE" \
  --source="$SOURCE" --out="$OUT" --vq="$VQ" --num_workers="$WORKERS" --no_progress \
  "${PREPARE_ARGS[@]}") --worker_index=\"\${SLURM_ARRAY_TASK_ID}\""
FINAL="${ACTIVATE}$(shell_quote "$PY" -m mars_jax.data.prepare --finalize --out="$OUT")"

COMMON=(--chdir="$REPO_DIR" --nodes=1 --ntasks=1)
[[ -n "$TIME" ]] && COMMON+=(--time="$TIME")
[[ -n "$PARTITION" ]] && COMMON+=(--partition="$PARTITION")
[[ -n "$ACCOUNT" ]] && COMMON+=(--account="$ACCOUNT")
ARRAY_SPEC="0-$((WORKERS - 1))${MAX_PARALLEL:+%${MAX_PARALLEL}}"
ARRAY=(sbatch --parsable --job-name="$JOB_NAME" --array="$ARRAY_SPEC"
  --cpus-per-task="$CPUS" "${COMMON[@]}")
FINALIZE=(sbatch --parsable --job-name="${JOB_NAME}_finalize" --cpus-per-task=1 "${COMMON[@]}")
if [[ -n "$LOG_DIR" ]]; then
  ARRAY+=(--output="${LOG_DIR%/}/%x-%A_%a.out")
  FINALIZE+=(--output="${LOG_DIR%/}/%x-%j.out")
fi
ARRAY+=(--wrap="$WORKER")

if [[ "$DRY_RUN" == 1 ]]; then
  ARRAY_JOB=ARRAY_JOB_ID  # what sbatch --parsable prints
  run "${ARRAY[@]}"
else
  note "running: $(shell_quote "${ARRAY[@]}")"
  ARRAY_JOB=$("${ARRAY[@]}")
  ARRAY_JOB=${ARRAY_JOB%%;*}
  note "job array ${ARRAY_JOB}: ${WORKERS} workers"
fi
run "${FINALIZE[@]}" --dependency="afterok:${ARRAY_JOB}" --wrap="$FINAL"
