#!/usr/bin/env bash
# Prepare training shards on Kubernetes: an Indexed Job of N completions, pod k running
# `python -m mars_jax.data.prepare --num_workers=N --worker_index=k` (it writes its own shards,
# s % N == k), then, once the Job is complete, a one-pod Job running `prepare --finalize`,
# which writes manifest.json. The manifests are written to --manifest-dir (also on --dry-run,
# for review) and applied with kubectl. Reapplying redoes only unfinished shards.
set -euo pipefail

SCRIPT_NAME=$(basename "$0")
LAUNCH_DIR=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=launch/common.sh
source "${LAUNCH_DIR}/common.sh"

usage() {
  cat <<EOF
Usage: ${SCRIPT_NAME} --stage=S --source=SOURCE --out=OUT --vq=VQ_DIR --workers=N \\
         --image=IMAGE --volume-claim=PVC [options] [-- PREPARE_ARGS...]

Create the Indexed Job NAME-workers (N pods, pod k running 'python3 -m mars_jax.data.prepare
--stage=S --source=SOURCE --out=OUT --vq=VQ_DIR --num_workers=N --worker_index=k
PREPARE_ARGS...' in IMAGE), wait for it to complete, then create the Job NAME-finalize
('prepare --finalize --out=OUT'). The volume claim PVC (ReadWriteMany) is mounted at
--mount-path in every pod; SOURCE, OUT and VQ_DIR are paths on it.

Required:
  --stage=S                training stage whose shards to write: 1, 2 or 3
  --source=SOURCE          folder | *.jsonl | *.csv | tfds:NAME[:SPLIT]
  --out=OUT                output directory (absolute, under --mount-path)
  --vq=VQ_DIR              VQ-GAN directory
  --workers=N              Job completions (shards are split s % N == k)
  --image=IMAGE            container image with mars_jax installed in /app (launch/Dockerfile)
  --volume-claim=PVC       PersistentVolumeClaim holding source, VQ and output

Options:
  --mount-path=DIR         where the claim is mounted (default: /data)
  --name=NAME              Job name prefix (default: mars-prepare)
  --namespace=NS           Kubernetes namespace (default: kubectl's)
  --parallelism=P          pods at once (default: N)
  --cpu=C                  CPU request per worker (default: 8)
  --memory=M               memory request per worker (default: 32Gi)
  --manifest-dir=DIR       where the Job manifests are written (default: ./k8s-NAME)
  --dry-run                write the manifests, print the kubectl commands, run nothing
  -h, --help               show this help
EOF
}

STAGE="" SOURCE="" OUT="" VQ="" WORKERS="" IMAGE="" CLAIM="" MOUNT=/data NAME=mars-prepare
NAMESPACE="" PARALLELISM="" CPU=8 MEMORY=32Gi MANIFEST_DIR=""
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
    --image) IMAGE=$(value_of "$@"); shift 2 ;;
    --volume-claim) CLAIM=$(value_of "$@"); shift 2 ;;
    --mount-path) MOUNT=$(value_of "$@"); shift 2 ;;
    --name) NAME=$(value_of "$@"); shift 2 ;;
    --namespace) NAMESPACE=$(value_of "$@"); shift 2 ;;
    --parallelism) PARALLELISM=$(value_of "$@"); shift 2 ;;
    --cpu) CPU=$(value_of "$@"); shift 2 ;;
    --memory) MEMORY=$(value_of "$@"); shift 2 ;;
    --manifest-dir) MANIFEST_DIR=$(value_of "$@"); shift 2 ;;
    --) shift; PREPARE_ARGS=("$@"); break ;;
    *) die "unknown option '$1' (prepare flags go after '--'; see --help)" ;;
  esac
done

require "$STAGE" --stage
require "$SOURCE" --source
require "$OUT" --out
require "$VQ" --vq
require "$WORKERS" --workers
require "$IMAGE" --image
require "$CLAIM" --volume-claim
[[ "$STAGE" =~ ^[123]$ ]] || die "--stage must be 1, 2 or 3, got '$STAGE'"
require_int "$WORKERS" --workers
PARALLELISM=${PARALLELISM:-$WORKERS}
require_int "$PARALLELISM" --parallelism
[[ "$NAME" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "--name '$NAME' must be lowercase letters, digits and '-'"
[[ "$OUT" == "${MOUNT%/}"/* ]] || die "--out '$OUT' must lie under --mount-path '${MOUNT}'"
MANIFEST_DIR=${MANIFEST_DIR:-k8s-${NAME}}

# yaml_str S: S as a double-quoted YAML (JSON) string.
yaml_str() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

# job_yaml NAME COMPLETIONS PARALLELISM CPU MEMORY ARG...: a Job running prepare with ARG...
job_yaml() {
  local name=$1 completions=$2 parallelism=$3 cpu=$4 memory=$5 arg
  shift 5
  cat <<EOF
apiVersion: batch/v1
kind: Job
metadata:
  name: ${name}
  labels: {app: mars-prepare}
spec:
  completions: ${completions}
  parallelism: ${parallelism}
  completionMode: Indexed
  backoffLimit: $((3 * completions))
  template:
    metadata:
      labels: {app: mars-prepare}
    spec:
      restartPolicy: OnFailure
      containers:
        - name: prepare
          image: $(yaml_str "$IMAGE")
          workingDir: /app
          env:
            - name: WORKER_INDEX
              valueFrom:
                fieldRef:
                  fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
          command: ["python3", "-m", "mars_jax.data.prepare"]
          args:
EOF
  for arg in "$@"; do
    printf '            - %s\n' "$(yaml_str "$arg")"
  done
  cat <<EOF
          resources:
            requests: {cpu: $(yaml_str "$cpu"), memory: $(yaml_str "$memory")}
          volumeMounts:
            - {name: data, mountPath: $(yaml_str "$MOUNT")}
      volumes:
        - name: data
          persistentVolumeClaim: {claimName: $(yaml_str "$CLAIM")}
EOF
}

mkdir -p "$MANIFEST_DIR"
WORKERS_YAML="${MANIFEST_DIR%/}/${NAME}-workers.yaml"
FINALIZE_YAML="${MANIFEST_DIR%/}/${NAME}-finalize.yaml"
# $(WORKER_INDEX) is expanded by Kubernetes from the container's env (the completion index).
# shellcheck disable=SC2016
job_yaml "${NAME}-workers" "$WORKERS" "$PARALLELISM" "$CPU" "$MEMORY" --stage="$STAGE" \
  --source="$SOURCE" --out="$OUT" --vq="$VQ" --num_workers="$WORKERS" \
  '--worker_index=$(WORKER_INDEX)' --no_progress "${PREPARE_ARGS[@]}" >"$WORKERS_YAML"
job_yaml "${NAME}-finalize" 1 1 1 4Gi --finalize --out="$OUT" >"$FINALIZE_YAML"
note "wrote ${WORKERS_YAML} and ${FINALIZE_YAML}"

KUBECTL=(kubectl)
[[ -n "$NAMESPACE" ]] && KUBECTL+=(--namespace="$NAMESPACE")
run "${KUBECTL[@]}" apply -f "$WORKERS_YAML"
run "${KUBECTL[@]}" wait --for=condition=complete --timeout=-1s "job/${NAME}-workers"
run "${KUBECTL[@]}" apply -f "$FINALIZE_YAML"
