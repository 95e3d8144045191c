"""Multi-process training on localhost: 2 processes × 4 CPU devices == 1 process × 8 devices.

Real processes, real `jax.distributed` (coordinator on a free localhost port), the real
trainer CLI (`python -m mars_jax.train`, tiny preset) and its `metrics.jsonl`. The two-process
run is killed with SIGKILL once a checkpoint exists, started again with the same command, and
must continue from the checkpoint's step with the losses of the uninterrupted run.

The reference is one process with 8 devices (`loop.run`) fed the same global batches: each
batch is the concatenation of the two processes' slices, as `jax.make_array_from_process_local_data`
assembles it in the two-process run. (The data stream itself may depend on the process count;
what is tested here is the distributed computation.)

Tolerances. One vs two processes (same bf16 step, same 8-device mesh; only the order of the
cross-process reductions differs): loss rtol 2e-5, gradient norm rtol 3e-3 (measured: loss
~3e-6, gradient norm up to 8e-4 after a few steps, as bf16 gradients are summed in another
order). A step run both before the kill and after the restart: rtol 1e-6 (measured: equal).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import portpicker
import pytest
from self_kill import self_killing_train_cmd

from mars_jax import train

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/stage1.py:tiny"
NUM_STEPS = 4  # the tiny preset checkpoints every 2 steps
KILL_STEP = 3  # after the step-2 checkpoint; the restart redoes step 3
LOSS_RTOL = 2e-5
GRAD_NORM_RTOL = 3e-3
RESUME_RTOL = 1e-6
# About a minute and a half on two idle cores; the deadline leaves room for a loaded machine.
RUN_TIMEOUT_S = 600

pytestmark = pytest.mark.slow

# One process, 8 devices, the two processes' data slices concatenated into each global batch.
REFERENCE_RUN = """
import sys
import numpy as np
from configs import stage1
from mars_jax.data import pipeline
from mars_jax.train_lib import loop

workdir, num_steps, num_processes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = stage1.get_config("tiny")
config.train.num_steps = num_steps
data = config.data.copy_and_resolve_references()
# What each process of the multi-process run uses: its 4 batch shards.
data.task_batch_multiple = 8 // num_processes
slices = [
    pipeline.make_train_iterator(data, config.train.global_batch, p, num_processes)
    for p in range(num_processes)
]

class Concatenated:
    def __iter__(self):
        return self

    def __next__(self):
        parts = [next(s) for s in slices]
        return {
            task: {
                k: v if k == "layout" else np.concatenate([p[task][k] for p in parts])
                for k, v in first.items()
            }
            for task, first in parts[0].items()
        }

loop.run(config, workdir, iterator=Concatenated())
"""


def _env(devices: int, cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env |= {
        # The suite's compile-time flags (tests/conftest.py), with this process's devices.
        "XLA_FLAGS": train.xla_flags_with_host_devices(os.environ.get("XLA_FLAGS", ""), devices),
        "JAX_PLATFORMS": "cpu",
        # The restarted processes reuse the executables compiled by the first ones.
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONUNBUFFERED": "1",
    }
    return env


def _start(
    workdir: Path, log: Path, devices: int, cache: Path, *extra: str, kill_step: int = 0
) -> subprocess.Popen:
    args = [
        f"--config={CONFIG}", f"--workdir={workdir}", f"--config.train.num_steps={NUM_STEPS}",
        *extra,
    ]  # fmt: skip
    if kill_step:
        cmd = self_killing_train_cmd(args, kill_step, settle=True)
    else:
        cmd = [sys.executable, "-m", "mars_jax.train", *args]
    return _popen(cmd, log, devices, cache)


def _start_reference(workdir: Path, log: Path, cache: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-c", REFERENCE_RUN, str(workdir), str(NUM_STEPS), "2"]
    return _popen(cmd, log, 8, cache)


def _popen(cmd: list[str], log: Path, devices: int, cache: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, cwd=REPO, env=_env(devices, cache), stdout=out, stderr=subprocess.STDOUT
        )


def _start_pair(
    workdir: Path, logs: Path, cache: Path, attempt: int, kill_step: int = 0
) -> list[subprocess.Popen]:
    port = portpicker.pick_unused_port()
    return _coordinator_first(
        port,
        lambda i: _start(
            workdir, logs / f"attempt{attempt}_process{i}.log", 4, cache,
            f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
            kill_step=kill_step,
        ),
    )  # fmt: skip


def _coordinator_first(port: int, start) -> list[subprocess.Popen]:
    """Process 0, then process 1 once process 0's coordination service listens on `port`.

    Started together, process 1 can dial before the service is up; gRPC then backs off
    between attempts, and on a loaded machine the wait reached ~2 minutes (two processes
    that normally start in seconds)."""
    first = start(0)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while first.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    return [first, start(1)]


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _wait(procs: list[subprocess.Popen], logs: list[Path], deadline: float) -> None:
    for proc, log in zip(procs, logs, strict=True):
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill(procs)
            pytest.fail(f"{log.name}: no exit within {RUN_TIMEOUT_S}s\n{_tail(log)}")
        assert rc == 0, f"{log.name} exited with {rc}\n{_tail(log)}"


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait()


def _records(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _committed_steps(workdir: Path) -> list[int]:
    """Checkpoint steps that Orbax has committed (a step dir without a tmp suffix)."""
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def _by_step(records: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records}


def _assert_close(got: list[dict], want: list[dict], what: str, loss_rtol: float, gn_rtol: float):
    want_loss, want_gn = _by_step(want, "loss"), _by_step(want, "grad_norm")
    for r in got:
        step = r["step"]
        np.testing.assert_allclose(
            r["loss"], want_loss[step], rtol=loss_rtol, err_msg=f"{what}: loss at step {step}"
        )
        np.testing.assert_allclose(
            r["grad_norm"], want_gn[step], rtol=gn_rtol, err_msg=f"{what}: grad_norm at {step}"
        )


def test_two_processes_match_one_and_resume_after_kill(tmp_path):
    cache = tmp_path / "jax_cache"
    logs = tmp_path / "logs"
    logs.mkdir()
    ref_dir, multi_dir = tmp_path / "one_process", tmp_path / "two_processes"
    deadline = time.monotonic() + RUN_TIMEOUT_S

    # Reference (1 process, 8 devices) and the first two-process attempt run side by side.
    ref = _start_reference(ref_dir, logs / "reference.log", cache)
    # Both processes kill themselves after step KILL_STEP, once the step-2 checkpoint is
    # committed: a kill mid-run at a known step.
    pair = _start_pair(multi_dir, logs, cache, attempt=1, kill_step=KILL_STEP)
    pair_logs = [logs / f"attempt1_process{i}.log" for i in range(2)]
    try:
        for proc, log in zip(pair, pair_logs, strict=True):
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert rc == -signal.SIGKILL, f"{log.name} exited with {rc}\n{_tail(log)}"
    finally:
        _kill(pair)
    killed_records = _records(multi_dir)
    assert [r["step"] for r in killed_records] == list(range(1, KILL_STEP + 1))
    assert _committed_steps(multi_dir)[-1] == 2  # what the restart resumes from
    resume_from = 2

    try:
        pair = _start_pair(multi_dir, logs, cache, attempt=2)
        _wait(pair, [logs / f"attempt2_process{i}.log" for i in range(2)], deadline)
        _wait([ref], [logs / "reference.log"], deadline)
    finally:
        _kill([*pair, ref])

    reference = _records(ref_dir)
    assert [r["step"] for r in reference] == list(range(1, NUM_STEPS + 1))
    assert np.isfinite([r["loss"] for r in reference]).all()

    # Two processes compute what one process computes (before the kill and after the restart).
    assert killed_records and killed_records[0]["step"] == 1
    # The restart dropped the lines of the steps it redid: each step appears once.
    records = _records(multi_dir)
    assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1))
    resumed = [r for r in records if r["step"] > resume_from]
    first = [r for r in killed_records if r["step"] <= resume_from]
    _assert_close(first + resumed, reference, "2 vs 1 process", LOSS_RTOL, GRAD_NORM_RTOL)

    # The restart continues from the checkpoint's step, not from step 1 ...
    assert [r["step"] for r in resumed] == list(range(resume_from + 1, NUM_STEPS + 1)), (
        f"expected steps {resume_from + 1}..{NUM_STEPS} after resuming from {resume_from}"
    )
    # ... and steps run both before the kill and after the restart give the same numbers
    # (same mesh, same executable): the checkpoint restored the exact state and data position.
    before = [r for r in killed_records if r["step"] > resume_from]
    _assert_close(before, resumed, "before kill vs resumed", RESUME_RTOL, RESUME_RTOL)
    assert _committed_steps(multi_dir)[-1] == NUM_STEPS


def test_processes_with_different_configs_fail_clearly(tmp_path):
    """A process launched with another config stops the run before compiling, on every process."""
    port = portpicker.pick_unused_port()
    cache, workdir = tmp_path / "jax_cache", tmp_path / "run"
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    procs = _coordinator_first(
        port,
        lambda i: _start(
            workdir, logs[i], 4, cache,
            f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
            f"--config.train.seed={i}",
        ),
    )  # fmt: skip
    try:
        for proc, log in zip(procs, logs, strict=True):
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
            assert rc != 0, f"{log.name}: a run with disagreeing configs exited 0"
            assert "processes disagree on the config" in log.read_text(errors="replace"), _tail(log)
    finally:
        _kill(procs)
    assert not (workdir / "checkpoints").exists() or not _committed_steps(workdir)
