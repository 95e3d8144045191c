#!/usr/bin/env bash
# Train on GKE through XPK: one `xpk workload create` that runs the trainer in a container on
# every TPU host (one or more slices) or every GPU node. JobSet restarts the workload after a
# preemption or node failure (--max-restarts) and the trainer resumes from the latest checkpoint
# in WORKDIR; rerunning the same command (with --replace) does the same by hand.
set -euo pipefail

SCRIPT_NAME=$(basename "$0")
LAUNCH_DIR=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=launch/common.sh
source "${LAUNCH_DIR}/common.sh"

usage() {
  cat <<EOF
Usage: ${SCRIPT_NAME} --config=CONFIG --workdir=WORKDIR --project=PROJECT --zone=ZONE \\
         --cluster=CLUSTER --workload=NAME --image=IMAGE \\
         (--tpu-type=TYPE [--num-slices=N] | --gpu-type=TYPE [--num-nodes=N]) \\
         [options] [-- TRAINER_ARGS...]

Submit 'python3 -m mars_jax.train --config=CONFIG --workdir=WORKDIR TRAINER_ARGS...' to the
GKE cluster CLUSTER as the XPK workload NAME, in the container IMAGE (built from
launch/Dockerfile, see launch/README.md).

Required:
  --config=CONFIG          trainer config, e.g. configs/stage1.py:qwen7b (path inside the image)
  --workdir=WORKDIR        checkpoints and logs, a bucket: gs://BUCKET/runs/stage1
  --project=PROJECT        Google Cloud project
  --zone=ZONE              zone of the cluster
  --cluster=CLUSTER        GKE cluster created with 'xpk cluster create'
  --workload=NAME          workload name (lowercase letters, digits, '-')
  --image=IMAGE            container image with mars_jax installed in /app
  --tpu-type=TYPE          TPU slice type, e.g. v5p-128 (or --gpu-type)
  --gpu-type=TYPE          XPK GPU node type, e.g. h100-80gb-8, h100-mega-80gb-8, h200-141gb-8

Options:
  --num-slices=N           TPU slices, joined over the data-center network (default: 1)
  --num-nodes=N            GPU nodes (default: 1)
  --max-restarts=N         JobSet restarts after preemption or failure (default: 10)
  --priority=P             very-low, low, medium, high or very-high (default: medium)
  --spot                   run on Spot capacity
  --replace                delete an existing workload of the same name first (resume by hand)
  --dry-run                print the commands instead of running them
  -h, --help               show this help
EOF
}

CONFIG="" WORKDIR="" PROJECT="" ZONE="" CLUSTER="" WORKLOAD="" IMAGE=""
TPU_TYPE="" GPU_TYPE="" NUM_SLICES=1 NUM_NODES=1 MAX_RESTARTS=10 PRIORITY=medium
SPOT=0 REPLACE=0
TRAINER_ARGS=()

while (($#)); do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --spot) SPOT=1; shift ;;
    --replace) REPLACE=1; shift ;;
    --config) CONFIG=$(value_of "$@"); shift 2 ;;
    --workdir) WORKDIR=$(value_of "$@"); shift 2 ;;
    --project) PROJECT=$(value_of "$@"); shift 2 ;;
    --zone) ZONE=$(value_of "$@"); shift 2 ;;
    --cluster) CLUSTER=$(value_of "$@"); shift 2 ;;
    --workload) WORKLOAD=$(value_of "$@"); shift 2 ;;
    --image) IMAGE=$(value_of "$@"); shift 2 ;;
    --tpu-type) TPU_TYPE=$(value_of "$@"); shift 2 ;;
    --gpu-type) GPU_TYPE=$(value_of "$@"); shift 2 ;;
    --num-slices) NUM_SLICES=$(value_of "$@"); shift 2 ;;
    --num-nodes) NUM_NODES=$(value_of "$@"); shift 2 ;;
    --max-restarts) MAX_RESTARTS=$(value_of "$@"); shift 2 ;;
    --priority) PRIORITY=$(value_of "$@"); shift 2 ;;
    --) shift; TRAINER_ARGS=("$@"); break ;;
    *) die "unknown option '$1' (trainer flags go after '--'; see --help)" ;;
  esac
done

require "$CONFIG" --config
require "$WORKDIR" --workdir
require "$PROJECT" --project
require "$ZONE" --zone
require "$CLUSTER" --cluster
require "$WORKLOAD" --workload
require "$IMAGE" --image
[[ -n "$TPU_TYPE" || -n "$GPU_TYPE" ]] || die "missing required option --tpu-type or --gpu-type (see --help)"
[[ -n "$TPU_TYPE" && -n "$GPU_TYPE" ]] && die "--tpu-type and --gpu-type exclude each other"
require_int "$NUM_SLICES" --num-slices
require_int "$NUM_NODES" --num-nodes
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "option --max-restarts must be >= 0, got '$MAX_RESTARTS'"
[[ "$WORKLOAD" =~ ^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$ ]] ||
  die "--workload '$WORKLOAD' must be lowercase letters, digits and '-', at most 40 characters"
case "$PRIORITY" in
  very-low | low | medium | high | very-high) ;;
  *) die "--priority must be very-low, low, medium, high or very-high, got '$PRIORITY'" ;;
esac

XPK_SCOPE=(--cluster="$CLUSTER" --project="$PROJECT" --zone="$ZONE")
if [[ -n "$TPU_TYPE" ]]; then
  # --distributed: jax.distributed finds its peers (and the slices) from the TPU environment.
  DEVICE_ARGS=(--tpu-type="$TPU_TYPE" --num-slices="$NUM_SLICES")
  COMMAND="cd /app && $(trainer_command "$CONFIG" "$WORKDIR" --distributed "${TRAINER_ARGS[@]}")"
else
  # XPK gives each GPU pod JAX_COORDINATOR_ADDRESS (host of rank 0), JAX_COORDINATOR_PORT,
  # NNODES and NODE_RANK; they are expanded by the container's shell.
  DEVICE_ARGS=(--device-type="$GPU_TYPE" --num-nodes="$NUM_NODES")
  while IFS= read -r line; do DEVICE_ARGS+=(--env="$line"); done < <(gpu_env)
  # shellcheck disable=SC2016  # expanded inside the container, not here
  COMMAND="cd /app && $(trainer_command "$CONFIG" "$WORKDIR" "${TRAINER_ARGS[@]}")"' --coordinator_address="${JAX_COORDINATOR_ADDRESS}:${JAX_COORDINATOR_PORT}" --num_processes="${NNODES}" --process_id="${NODE_RANK}"'
fi

CAPACITY=()
((SPOT)) && CAPACITY=(--spot)

if ((REPLACE)); then
  run xpk workload delete --workload="$WORKLOAD" "${XPK_SCOPE[@]}" --force
fi
run xpk workload create --workload="$WORKLOAD" "${XPK_SCOPE[@]}" --docker-image="$IMAGE" \
  "${DEVICE_ARGS[@]}" --max-restarts="$MAX_RESTARTS" --priority="$PRIORITY" "${CAPACITY[@]}" \
  --command="$COMMAND"
