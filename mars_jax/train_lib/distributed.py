"""Multi-process start-up and agreement checks (one process per host).

Start-up (``initialize``): ``jax.distributed.initialize`` is called when the run is
multi-process. Each of the three values comes from its flag, else from its variable:

- coordinator address: ``--coordinator_address`` or ``JAX_COORDINATOR_ADDRESS``;
- number of processes: ``--num_processes`` or ``JAX_NUM_PROCESSES``;
- this process's id: ``--process_id`` or ``JAX_PROCESS_ID``.

JAX itself reads only ``JAX_COORDINATOR_ADDRESS``, so the other two are read here. Either all
three are given, or none (single process), or ``--distributed`` lets JAX auto-detect the
cluster (SLURM, Cloud TPU, GKE/MPI, ...) and fill in whatever is not given. Some but not all
of them without ``--distributed`` is an error that names the missing ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve_args(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    auto: bool,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """Keyword arguments for ``jax.distributed.initialize``, or None for a single process.

    Flags win over the environment; ``process_id < 0`` counts as not given.
    """
    environ = os.environ if environ is None else environ
    if process_id is not None and process_id < 0:
        process_id = None
    sources = {
        "coordinator_address": (coordinator_address or None, "--coordinator_address"),
        "num_processes": (num_processes or None, "--num_processes"),
        "process_id": (process_id, "--process_id"),
    }
    from_env = {
        "coordinator_address": (environ.get(ENV_COORDINATOR, "").strip() or None, ENV_COORDINATOR),
        "num_processes": (_env_int(environ, ENV_NUM_PROCESSES), ENV_NUM_PROCESSES),
        "process_id": (_env_int(environ, ENV_PROCESS_ID), ENV_PROCESS_ID),
    }
    kwargs, given = {}, []
    for key, (value, flag) in sources.items():
        env_value, env_name = from_env[key]
        if value is not None:
            kwargs[key] = value
            given.append(flag)
        elif env_value is not None:
            kwargs[key] = env_value
            given.append(env_name)
    if not kwargs and not auto:
        return None
    if not auto and len(kwargs) < len(sources):
        missing = [f"{sources[k][1]} / {from_env[k][1]}" for k in sources if k not in kwargs]
        raise ValueError(
            f"multi-process start-up got {', '.join(given)} but not {', '.join(missing)}: give "
            "all three (flags or environment), none (single process), or --distributed to "
            "let JAX detect the cluster"
        )
    n, i = kwargs.get("num_processes"), kwargs.get("process_id")
    if n is not None and n < 1:
        raise ValueError(f"number of processes must be >= 1, got {n}")
    if n is not None and i is not None and not 0 <= i < n:
        raise ValueError(f"process id {i} is not in [0, {n}) (number of processes {n})")
    return {k: (str(v) if k == "coordinator_address" else int(v)) for k, v in kwargs.items()}


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> bool:
    """Join the job when it is multi-process; returns whether ``jax.distributed`` was started."""
    kwargs = resolve_args(coordinator_address, num_processes, process_id, auto)
    if kwargs is None:
        return False
    jax.distributed.initialize(**kwargs)
    return True


@contextlib.contextmanager
def joined(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> Iterator[bool]:
    """``initialize`` for the block, and ``jax.distributed.shutdown`` at its end, also when it
    raises: the shutdown stops this process's client before process 0's coordination service.
    Left to interpreter exit, the two are torn down in no set order, and a process whose
    coordinator is gone first can wait out the heartbeat timeout (100 s) before it exits."""
    started = initialize(coordinator_address, num_processes, process_id, auto)
    try:
        yield started
    finally:
        if started:
            jax.distributed.shutdown()


def config_hash(config_json: str) -> str:
    return hashlib.sha256(config_json.encode()).hexdigest()


def assert_same_across_processes(name: str, digest_hex: str) -> None:
    """Fail on every process when processes disagree on ``digest_hex`` (e.g. the config hash)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    mine = np.frombuffer(bytes.fromhex(digest_hex)[:16], dtype=np.uint32).copy()
    gathered = np.asarray(multihost_utils.process_allgather(mine))
    gathered = gathered.reshape(jax.process_count(), -1)
    differ = [i for i in range(len(gathered)) if not np.array_equal(gathered[i], gathered[0])]
    if differ:
        raise RuntimeError(
            f"processes disagree on the {name}: process 0 has {gathered[0].tobytes().hex()}, "
            f"processes {differ} differ (this is process {jax.process_index()} with "
            f"{mine.tobytes().hex()}); launch every process with the same config and flags"
        )


def canonical_json(tree: Any) -> str:
    return json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
