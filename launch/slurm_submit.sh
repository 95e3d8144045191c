#!/usr/bin/env bash
# Submit a training run to a SLURM cluster of A100/H100 nodes: writes the sbatch line for
# launch/slurm_gpu.sbatch (nodes, GPUs, tasks per node, time, partition, account) so the
# allocation and the process layout always agree. Resubmitting the same command resumes the
# run from the latest checkpoint in WORKDIR.
set -euo pipefail

SCRIPT_NAME=$(basename "$0")
LAUNCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(cd "${LAUNCH_DIR}/.." && pwd)
# shellcheck source=launch/common.sh
source "${LAUNCH_DIR}/common.sh"

usage() {
  cat <<EOF
Usage: ${SCRIPT_NAME} --config=CONFIG --workdir=WORKDIR --nodes=N [options] [-- TRAINER_ARGS...]

Submit 'python3 -m mars_jax.train --config=CONFIG --workdir=WORKDIR TRAINER_ARGS...' on N
GPU nodes with sbatch (launch/slurm_gpu.sbatch). Rerun the same command to resume.

Required:
  --config=CONFIG          trainer config, e.g. configs/stage1.py:qwen7b
  --workdir=WORKDIR        checkpoints and logs on a shared file system or gs://BUCKET/...
  --nodes=N                number of nodes

Options:
  --gpus-per-node=G        GPUs per node (default: 8)
  --process-per=gpu|node   one process per GPU (default) or one per node
  --time=T                 time limit, e.g. 24:00:00 (default: the partition's)
  --partition=P            SLURM partition
  --account=A              SLURM account
  --qos=Q                  SLURM quality of service
  --job-name=NAME          job name (default: mars_jax)
  --log-dir=DIR            where SLURM writes NAME-JOBID.out (default: current directory)
  --venv=DIR               Python environment to activate on every node
  --container-image=IMAGE  pyxis/enroot image with mars_jax installed in /app
  --container-mounts=M     pyxis mounts (with --container-image)
  --dry-run                print the sbatch command instead of submitting
  -h, --help               show this help
EOF
}

CONFIG="" WORKDIR="" NODES="" GPUS_PER_NODE=8 PROCESS_PER=gpu TIME="" PARTITION="" ACCOUNT=""
QOS="" JOB_NAME=mars_jax LOG_DIR="" VENV="" CONTAINER_IMAGE="" CONTAINER_MOUNTS=""
TRAINER_ARGS=()

while (($#)); do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --config) CONFIG=$(value_of "$@"); shift 2 ;;
    --workdir) WORKDIR=$(value_of "$@"); shift 2 ;;
    --nodes) NODES=$(value_of "$@"); shift 2 ;;
    --gpus-per-node) GPUS_PER_NODE=$(value_of "$@"); shift 2 ;;
    --process-per) PROCESS_PER=$(value_of "$@"); shift 2 ;;
    --time) TIME=$(value_of "$@"); shift 2 ;;
    --partition) PARTITION=$(value_of "$@"); shift 2 ;;
    --account) ACCOUNT=$(value_of "$@"); shift 2 ;;
    --qos) QOS=$(value_of "$@"); shift 2 ;;
    --job-name) JOB_NAME=$(value_of "$@"); shift 2 ;;
    --log-dir) LOG_DIR=$(value_of "$@"); shift 2 ;;
    --venv) VENV=$(value_of "$@"); shift 2 ;;
    --container-image) CONTAINER_IMAGE=$(value_of "$@"); shift 2 ;;
    --container-mounts) CONTAINER_MOUNTS=$(value_of "$@"); shift 2 ;;
    --) shift; TRAINER_ARGS=("$@"); break ;;
    *) die "unknown option '$1' (trainer flags go after '--'; see --help)" ;;
  esac
done

require "$CONFIG" --config
require "$WORKDIR" --workdir
require "$NODES" --nodes
require_int "$NODES" --nodes
require_int "$GPUS_PER_NODE" --gpus-per-node
case "$PROCESS_PER" in
  gpu) TASKS_PER_NODE=$GPUS_PER_NODE ;;
  node) TASKS_PER_NODE=1 ;;
  *) die "--process-per must be gpu or node, got '$PROCESS_PER'" ;;
esac
[[ -n "$VENV" && -n "$CONTAINER_IMAGE" ]] && die "--venv and --container-image exclude each other"
[[ "$WORKDIR" == gs://* || "$WORKDIR" == /* ]] ||
  die "--workdir '$WORKDIR' must be an absolute path on a shared file system or a gs:// URL"

SBATCH=(sbatch --job-name="$JOB_NAME" --nodes="$NODES" --gpus-per-node="$GPUS_PER_NODE"
  --ntasks-per-node="$TASKS_PER_NODE" --chdir="$REPO_DIR"
  --export="ALL,MARS_JAX_LAUNCH_DIR=${LAUNCH_DIR}")
[[ -n "$TIME" ]] && SBATCH+=(--time="$TIME")
[[ -n "$PARTITION" ]] && SBATCH+=(--partition="$PARTITION")
[[ -n "$ACCOUNT" ]] && SBATCH+=(--account="$ACCOUNT")
[[ -n "$QOS" ]] && SBATCH+=(--qos="$QOS")
[[ -n "$LOG_DIR" ]] && SBATCH+=(--output="${LOG_DIR%/}/%x-%j.out")

SCRIPT_ARGS=(--config="$CONFIG" --workdir="$WORKDIR" --gpus-per-node="$GPUS_PER_NODE"
  --process-per="$PROCESS_PER")
[[ -n "$VENV" ]] && SCRIPT_ARGS+=(--venv="$VENV")
[[ -n "$CONTAINER_IMAGE" ]] && SCRIPT_ARGS+=(--container-image="$CONTAINER_IMAGE")
[[ -n "$CONTAINER_MOUNTS" ]] && SCRIPT_ARGS+=(--container-mounts="$CONTAINER_MOUNTS")

run "${SBATCH[@]}" "${LAUNCH_DIR}/slurm_gpu.sbatch" "${SCRIPT_ARGS[@]}" -- "${TRAINER_ARGS[@]}"
