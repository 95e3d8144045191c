"""Multi-process start-up and agreement checks (one process per host).

Start-up (``initialize``): ``jax.distributed.initialize`` is called when the run is
multi-process, detected from, in order:

1. explicit flags ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``;
2. JAX's own variables ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` +
   ``JAX_PROCESS_ID`` (read by ``jax.distributed.initialize()`` itself);
3. ``--distributed``: let JAX auto-detect the cluster (SLURM, Cloud TPU, GKE/MPI, ...).

Without any of these the run is single-process and nothing is initialised.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np


def wants_distributed(
    coordinator_address: str | None, num_processes: int | None, auto: bool
) -> bool:
    if coordinator_address or (num_processes and num_processes > 1) or auto:
        return True
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> bool:
    """Join the job when it is multi-process; returns whether ``jax.distributed`` was started."""
    if not wants_distributed(coordinator_address, num_processes, auto):
        return False
    kwargs = {}
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes:
        kwargs["num_processes"] = int(num_processes)
    if process_id is not None and process_id >= 0:
        kwargs["process_id"] = int(process_id)
    jax.distributed.initialize(**kwargs)
    return True


def config_hash(config_json: str) -> str:
    return hashlib.sha256(config_json.encode()).hexdigest()


def assert_same_across_processes(name: str, digest_hex: str) -> None:
    """Fail on every process when processes disagree on ``digest_hex`` (e.g. the config hash)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils  # noqa: PLC0415

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
