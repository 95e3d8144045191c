#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: request it as a queued resource, ship the committed source to
# every worker, install it, and start the trainer on all workers at once. A preempted slice is
# deleted and requested again, and the trainer resumes from the latest checkpoint in WORKDIR,
# so the same command both starts and resumes a run.
set -euo pipefail

SCRIPT_NAME=$(basename "$0")
LAUNCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(cd "${LAUNCH_DIR}/.." && pwd)
# shellcheck source=launch/common.sh
source "${LAUNCH_DIR}/common.sh"

usage() {
  cat <<EOF
Usage: ${SCRIPT_NAME} --config=CONFIG --workdir=WORKDIR --project=PROJECT --zone=ZONE \\
         --tpu-type=TYPE --name=NAME [options] [-- TRAINER_ARGS...]

Request a TPU VM slice (queued resource NAME, node NAME), install mars_jax on every worker and
run 'python3 -m mars_jax.train --config=CONFIG --workdir=WORKDIR TRAINER_ARGS...' on all of
them. Rerun the same command to resume after a preemption.

Required:
  --config=CONFIG          trainer config, e.g. configs/stage1.py:qwen7b (path inside the repo)
  --workdir=WORKDIR        checkpoints and logs; use a bucket, e.g. gs://BUCKET/runs/stage1
  --project=PROJECT        Google Cloud project
  --zone=ZONE              zone with TPU capacity, e.g. us-east5-a
  --tpu-type=TYPE          accelerator type, e.g. v5p-128, v5litepod-256, v6e-64, v4-64
  --name=NAME              name of the queued resource and of the TPU node

Options:
  --runtime-version=V      TPU software version (default: chosen from --tpu-type)
  --spot                   request Spot capacity (cheaper, preemptible)
  --reserved               use the project's reservation
  --max-restarts=N         re-request the slice and restart up to N times after a
                           failure or preemption (default: 0)
  --poll-seconds=S         seconds between state checks while waiting (default: 60)
  --skip-setup             do not copy the source or pip install (already done)
  --jax-version=V          jax version installed on the workers (default: 0.10.2)
  --dry-run                print the commands instead of running them
  -h, --help               show this help
EOF
}

CONFIG="" WORKDIR="" PROJECT="" ZONE="" TPU_TYPE="" NAME="" RUNTIME_VERSION=""
SPOT=0 RESERVED=0 MAX_RESTARTS=0 POLL_SECONDS=60 SKIP_SETUP=0 JAX_VERSION=0.10.2
TRAINER_ARGS=()

while (($#)); do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --spot) SPOT=1; shift ;;
    --reserved) RESERVED=1; shift ;;
    --skip-setup) SKIP_SETUP=1; shift ;;
    --config) CONFIG=$(value_of "$@"); shift 2 ;;
    --workdir) WORKDIR=$(value_of "$@"); shift 2 ;;
    --project) PROJECT=$(value_of "$@"); shift 2 ;;
    --zone) ZONE=$(value_of "$@"); shift 2 ;;
    --tpu-type) TPU_TYPE=$(value_of "$@"); shift 2 ;;
    --name) NAME=$(value_of "$@"); shift 2 ;;
    --runtime-version) RUNTIME_VERSION=$(value_of "$@"); shift 2 ;;
    --max-restarts) MAX_RESTARTS=$(value_of "$@"); shift 2 ;;
    --poll-seconds) POLL_SECONDS=$(value_of "$@"); shift 2 ;;
    --jax-version) JAX_VERSION=$(value_of "$@"); shift 2 ;;
    --) shift; TRAINER_ARGS=("$@"); break ;;
    *) die "unknown option '$1' (trainer flags go after '--'; see --help)" ;;
  esac
done

require "$CONFIG" --config
require "$WORKDIR" --workdir
require "$PROJECT" --project
require "$ZONE" --zone
require "$TPU_TYPE" --tpu-type
require "$NAME" --name
require_int "$POLL_SECONDS" --poll-seconds
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "option --max-restarts must be >= 0, got '$MAX_RESTARTS'"
((SPOT && RESERVED)) && die "--spot and --reserved exclude each other"

if [[ -z "$RUNTIME_VERSION" ]]; then
  case "$TPU_TYPE" in
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v4-* | v3-* | v2-*) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
    *) die "no default --runtime-version for --tpu-type '$TPU_TYPE'; pass one" ;;
  esac
fi

GCLOUD_SCOPE=(--project="$PROJECT" --zone="$ZONE")
REMOTE_DIR=mars_jax
SOURCE_TARBALL=mars_jax_src.tar.gz
# TPU VM images ship Python 3.10; jax 0.10 needs >= 3.11: uv installs one into a venv.
REMOTE_VENV=mars_venv
TRAINER_PYTHON=../${REMOTE_VENV}/bin/python

queued_resource_state() {
  gcloud compute tpus queued-resources describe "$NAME" "${GCLOUD_SCOPE[@]}" \
    --format='value(state.state)' 2>/dev/null || true
}

create_queued_resource() {
  local capacity=()
  ((SPOT)) && capacity=(--spot)
  ((RESERVED)) && capacity=(--reserved)
  run gcloud compute tpus queued-resources create "$NAME" "${GCLOUD_SCOPE[@]}" \
    --node-id="$NAME" --accelerator-type="$TPU_TYPE" --runtime-version="$RUNTIME_VERSION" \
    "${capacity[@]}"
}

delete_queued_resource() {
  run gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_SCOPE[@]}" --force --quiet
}

# Brings the queued resource to ACTIVE: creates it when absent, re-creates it when it failed
# or was preempted (SUSPENDED), and waits while it is queued or provisioning.
ensure_active_slice() {
  if [[ "$DRY_RUN" == 1 ]]; then
    create_queued_resource
    return
  fi
  local state
  while true; do
    state=$(queued_resource_state)
    case "$state" in
      ACTIVE) note "queued resource $NAME is ACTIVE"; return ;;
      "") note "queued resource $NAME does not exist; requesting it"; create_queued_resource ;;
      FAILED | SUSPENDED)
        note "queued resource $NAME is $state; deleting and requesting it again"
        delete_queued_resource
        create_queued_resource
        ;;
      SUSPENDING | DELETING) note "queued resource $NAME is $state; waiting" ;;
      *) note "queued resource $NAME is $state; waiting for ACTIVE" ;;
    esac
    sleep "$POLL_SECONDS"
  done
}

tpu_ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_SCOPE[@]}" --worker=all \
    --command="$1"
}

setup_workers() {
  local tarball
  if [[ "$DRY_RUN" == 1 ]]; then
    tarball="/tmp/${SOURCE_TARBALL}"
  else
    tarball=$(mktemp -d)/${SOURCE_TARBALL}
  fi
  run git -C "$REPO_DIR" archive --format=tar.gz --output="$tarball" HEAD
  run gcloud compute tpus tpu-vm scp "$tarball" "${NAME}:${SOURCE_TARBALL}" \
    "${GCLOUD_SCOPE[@]}" --worker=all
  tpu_ssh_all "set -e; rm -rf ${REMOTE_DIR}; mkdir -p ${REMOTE_DIR}; \
tar -xzf ${SOURCE_TARBALL} -C ${REMOTE_DIR}; \
python3 -m pip install -q --user -U uv; \
~/.local/bin/uv venv -q --allow-existing --python 3.11 ${REMOTE_VENV}; \
~/.local/bin/uv pip install -q --python ${REMOTE_VENV}/bin/python \
'jax[tpu]==${JAX_VERSION}' -e ./${REMOTE_DIR}"
}

train_on_workers() {
  tpu_ssh_all "cd ${REMOTE_DIR} && $(trainer_command "$CONFIG" "$WORKDIR" --distributed "${TRAINER_ARGS[@]}")"
}

attempt=0
while true; do
  ensure_active_slice
  ((SKIP_SETUP)) || setup_workers
  if train_on_workers; then
    [[ "$DRY_RUN" == 1 ]] || note "training finished"
    exit 0
  fi
  attempt=$((attempt + 1))
  if ((attempt > MAX_RESTARTS)); then
    die "training failed after ${attempt} attempt(s); rerun the same command to resume from ${WORKDIR}"
  fi
  note "training stopped (state: $(queued_resource_state)); restart ${attempt}/${MAX_RESTARTS}"
done
