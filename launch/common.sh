# shellcheck shell=bash
# Helpers shared by the launch scripts (sourced, never run): option parsing, errors, the
# dry-run switch and the trainer command line. Keeping them here makes every script print and
# run commands the same way, so `--dry-run` output is exactly what a real run executes.

# Set to 1 by --dry-run: commands are printed on stdout, one per line, instead of run.
DRY_RUN=${DRY_RUN:-0}

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

# Progress messages go to stderr so that stdout of a dry run holds only commands.
note() {
  printf '[%s] %s\n' "${SCRIPT_NAME:-launch}" "$*" >&2
}

# value_of FLAG [VALUE ...]: prints VALUE, or fails naming FLAG when it is missing.
value_of() {
  if (($# < 2)) || [[ -z "$2" || "$2" == --* ]]; then
    die "option $1 needs a value (see --help)"
  fi
  printf '%s' "$2"
}

# require VALUE FLAG: fails with a message naming FLAG when VALUE is empty.
require() {
  [[ -n "$1" ]] || die "missing required option $2 (see --help)"
}

# require_int VALUE FLAG: fails unless VALUE is a positive integer.
require_int() {
  [[ "$1" =~ ^[1-9][0-9]*$ ]] || die "option $2 must be a positive integer, got '$1'"
}

# shell_quote ARG...: one line that a POSIX shell parses back into exactly ARG...
shell_quote() {
  local out=() arg sq="'" escaped_sq="'\\''"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+^-]+$ ]]; then
      out+=("$arg")
    else
      out+=("'${arg//$sq/$escaped_sq}'")
    fi
  done
  printf '%s' "${out[*]}"
}

# run CMD ARG...: runs the command, or prints it (quoted) under --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    shell_quote "$@"
    printf '\n'
  else
    note "running: $(shell_quote "$@")"
    "$@"
  fi
}

# trainer_command CONFIG WORKDIR [TRAINER_ARG...]: the trainer's command line as one quoted
# string, for remote shells (gcloud ssh, containers) that take a single command argument.
# TRAINER_PYTHON picks the interpreter (default: python3 on PATH).
trainer_command() {
  local config=$1 workdir=$2
  shift 2
  shell_quote "${TRAINER_PYTHON:-python3}" -m mars_jax.train "--config=${config}" \
    "--workdir=${workdir}" "$@"
}

# XLA flags for NVIDIA GPUs (A100/H100), after NVIDIA's JAX-Toolbox guide "Tips for
# High-Performance LLMs with JAX and XLA": the latency-hiding scheduler overlaps the FSDP
# all-gathers / reduce-scatters with compute, combining and pipelining them across the scanned
# layers keeps them large and early. Every flag was checked against jaxlib 0.10.2 (an unknown
# flag aborts XLA at start-up; tests/test_launch.py runs that check). A user's own XLA_FLAGS
# come last and win.
GPU_XLA_FLAGS=(
  --xla_gpu_enable_latency_hiding_scheduler=true
  --xla_gpu_enable_triton_gemm=false
  --xla_gpu_all_gather_combine_threshold_bytes=1073741824
  --xla_gpu_reduce_scatter_combine_threshold_bytes=1073741824
  --xla_gpu_all_reduce_combine_threshold_bytes=1073741824
  --xla_gpu_enable_all_gather_combine_by_dim=false
  --xla_gpu_enable_reduce_scatter_combine_by_dim=false
  --xla_gpu_enable_pipelined_all_gather=true
  --xla_gpu_enable_pipelined_reduce_scatter=true
  --xla_gpu_enable_pipelined_all_reduce=true
  --xla_gpu_enable_while_loop_double_buffering=true
)

# gpu_env: prints KEY=VALUE lines of the environment a GPU training process needs. Values
# already set in the caller's environment win, so a cluster can override any of them.
gpu_env() {
  printf 'XLA_FLAGS=%s\n' "${GPU_XLA_FLAGS[*]}${XLA_FLAGS:+ ${XLA_FLAGS}}"
  # 90 % of GPU memory for XLA; cuDNN / NCCL need the rest.
  printf 'XLA_PYTHON_CLIENT_MEM_FRACTION=%s\n' "${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
  # One CUDA work queue keeps the scheduler's order of compute and collectives (A100/H100;
  # NVIDIA advises against it on Blackwell: export CUDA_DEVICE_MAX_CONNECTIONS=32 there).
  printf 'CUDA_DEVICE_MAX_CONNECTIONS=%s\n' "${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
  printf 'NCCL_DEBUG=%s\n' "${NCCL_DEBUG:-WARN}"
  # NCCL_IB_* / NCCL_SOCKET_IFNAME describe the cluster's fabric: passed on only when set.
  local name
  for name in NCCL_IB_HCA NCCL_IB_SL NCCL_IB_TIMEOUT NCCL_IB_GID_INDEX NCCL_SOCKET_IFNAME \
    NCCL_NVLS_ENABLE NCCL_CROSS_NIC; do
    [[ -n "${!name:-}" ]] && printf '%s=%s\n' "$name" "${!name}"
  done
  return 0
}
