"""Checkpoint integrity: checksums written with every checkpoint, verified before a resume.

Two records, because saves are asynchronous (Orbax writes in a background thread and
commits the step directory by renaming it into place):

- ``integrity`` (an Orbax JSON item, part of the same atomic commit as the state): the
  sha256 of each process's data-iterator state file (``data/process_<i>-of-<n>.json``),
  computed in host memory from the exact text Grain's handler writes. Every committed
  checkpoint has it, so an edited iterator state is caught even when the next record is
  missing.
- ``_FILE_CHECKSUMS.json`` (the *seal*), inside the step directory: size and sha256 of every
  file of the checkpoint, computed *after* Orbax committed it (read back from disk, by a
  background thread of process 0, so training does not wait) and written atomically
  (temporary name, then rename), with a sha256 over its own list. It is valid only when
  complete: a torn or edited seal fails its own hash. Hashing the files after the commit
  rather than the arrays before the write keeps this independent of Orbax's encoding
  (OCDBT, compression, sharding), covers the metadata and iterator files too, and lets
  ``--verify_checkpoint`` check a run without loading a model. The cost is one read of the
  checkpoint per save (from the page cache when local); a run killed between the commit and
  the seal leaves a checkpoint without one, which is then checked structurally only (every
  part present and readable, iterator state against its in-commit checksum, state finite).

``check_step`` verifies a step directory without loading anything; ``restore_intact`` (used
by the trainer) walks checkpoints from the newest, verifies, restores, and sets each
damaged one aside as ``<step>.damaged-<reason>`` (never deleted), falling back to the
previous one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import threading
from typing import Any

import grain
import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from mars_jax import digests
from mars_jax.train_lib import step as step_lib
from mars_jax.train_lib import workdir as workdir_lib

SEAL_FILE = "_FILE_CHECKSUMS.json"
ITEM = "integrity"
DAMAGED_TAG = ".damaged-"
_VERSION = 1


class CheckpointDamagedError(RuntimeError):
    """No intact checkpoint to resume from, or a damaged one with ``on_damage='stop'``."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a checkpoint cannot be used: its part (``state``, ``data``, ...) and a reason."""

    part: str
    reason: str  # short slug: missing, truncated, size, checksum, seal, unreadable, ...
    detail: str

    def line(self, step: int) -> str:
        return f"checkpoint step {step}: {self.part}: {self.reason}: {self.detail}"


# ------------------------------------------------------------------------------ digests


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_state_text(iterator: Any) -> str:
    """The exact text Grain's Orbax handler writes for this iterator's state."""

    if isinstance(iterator, grain.DatasetIterator):
        return json.dumps(iterator.get_state(), indent=4)
    return iterator.get_state().decode()


def data_state_file(process_index: int, process_count: int) -> str:
    return f"process_{process_index}-of-{process_count}.json"


def integrity_record(iterator: Any | None) -> dict:
    """The in-commit ``integrity`` item: sha256 of every process's iterator state file."""

    record: dict[str, Any] = {"version": _VERSION, "data_sha256": {}}
    if iterator is None:
        return record
    digest = np.frombuffer(
        bytes.fromhex(sha256_bytes(data_state_text(iterator).encode())), np.uint8
    )
    n = jax.process_count()
    if n > 1:
        digests = np.asarray(multihost_utils.process_allgather(digest)).reshape(n, -1)
    else:
        digests = digest[None]
    for i in range(n):
        record["data_sha256"][data_state_file(i, n)] = bytes(digests[i]).hex()
    return record


def _walk(step_dir: epath.Path) -> list[str]:
    root = os.fspath(step_dir)
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel != SEAL_FILE and not name.startswith(".tmp-"):
                out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def _files_list(step_dir: epath.Path) -> list[str]:
    if os.path.isdir(os.fspath(step_dir)):
        return _walk(step_dir)
    out = []  # remote (gs://): epath's glob
    for p in step_dir.rglob("*"):
        if p.is_file() and p.name != SEAL_FILE:
            out.append(os.path.relpath(os.fspath(p), os.fspath(step_dir)))
    return sorted(out)


def _seal_hash(files: dict) -> str:
    return sha256_bytes(json.dumps(files, sort_keys=True).encode())


def seal(step_dir: epath.Path) -> dict:
    """Write ``<step_dir>/_FILE_CHECKSUMS.json`` (size + sha256 per file), atomically."""
    files = {}
    for rel in _files_list(step_dir):
        path = step_dir / rel
        files[rel] = {"size": path.stat().length, "sha256": digests.file_sha256(path)}
    record = {"version": _VERSION, "files": files, "sha256": _seal_hash(files)}
    tmp = step_dir / f".tmp-{SEAL_FILE}"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.rename(step_dir / SEAL_FILE)
    return record


class Sealer:
    """Seals committed checkpoints from a background thread (process 0 only).

    ``submit(step_dir)`` after ``manager.save``; ``ready(manager)`` at each step boundary
    hands committed ones (no save in flight) to the thread; ``drain()`` before the next save
    waits for the hashing to end, so Orbax never deletes (``checkpoint.keep``) a directory
    being sealed; ``close(manager)`` waits for in-flight saves, seals what is left and joins.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._pending: list[epath.Path] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = None
        self.errors: list[str] = []
        if enabled:
            self._thread = threading.Thread(target=self._work, name="ckpt-sealer", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            step_dir = self._queue.get()
            if step_dir is None:
                self._queue.task_done()
                return
            try:
                if step_dir.exists():
                    seal(step_dir)
            except FileNotFoundError:
                pass  # removed meanwhile
            except OSError as e:
                self.errors.append(f"{step_dir}: checksums not written: {e}")
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until every checkpoint handed to the thread is sealed."""
        if self.enabled:
            self._queue.join()

    def submit(self, step_dir: epath.Path) -> None:
        if self.enabled:
            self._pending.append(step_dir)

    def ready(self, manager) -> None:
        if self.enabled and self._pending and not manager.is_saving_in_progress():
            for step_dir in self._pending:
                self._queue.put(step_dir)
            self._pending = []

    def close(self, manager) -> None:
        if not self.enabled:
            return
        manager.wait_until_finished()
        self.ready(manager)
        self._queue.put(None)
        self._thread.join()


# ------------------------------------------------------------------------------ checks


def _part(rel: str) -> str:
    return rel.split("/", 1)[0] if "/" in rel else "checkpoint"


def _read_json(path: epath.Path) -> Any:
    return json.loads(path.read_text())


def required_files(expect_data: bool, process_index: int, process_count: int) -> list[str]:
    req = ["state/_METADATA", "base/metadata"]
    if expect_data:
        req.append("data/" + data_state_file(process_index, process_count))
    return req


def check_step(
    step_dir: epath.Path,
    expect_data: bool | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[Problem | None, bool]:
    """Verify a step directory without loading it: ``(problem or None, sealed)``.

    ``expect_data=None``: a data-iterator state is expected when the checkpoint has a
    ``data`` part or its ``integrity`` item lists one.
    """
    if not step_dir.is_dir():
        return Problem("checkpoint", "missing", f"{step_dir} is not a directory"), False
    integrity = None
    item = step_dir / ITEM / "metadata"
    if item.exists():
        try:
            integrity = _read_json(item)
            if not isinstance(integrity, dict) or not isinstance(
                integrity.get("data_sha256"), dict
            ):
                raise ValueError("not an integrity record")
        except (ValueError, UnicodeDecodeError) as e:
            return Problem(ITEM, "garbled", f"{item.name}: {e}"), False
    if expect_data is None:
        expect_data = (step_dir / "data").exists() or bool(integrity and integrity["data_sha256"])
    sealed = (step_dir / SEAL_FILE).exists()
    if sealed:
        try:
            record = _read_json(step_dir / SEAL_FILE)
            files = record["files"]
            if record.get("sha256") != _seal_hash(files):
                raise ValueError("its own checksum does not match")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            return Problem("checksums", "seal", f"{SEAL_FILE} is garbled ({e})"), True
        for rel in sorted(files):
            path = step_dir / rel
            if not path.exists():
                return Problem(_part(rel), "missing", f"{rel} is missing"), True
            size = path.stat().length
            if size != files[rel]["size"]:
                return (
                    Problem(
                        _part(rel),
                        "truncated" if size < files[rel]["size"] else "size",
                        f"{rel} has {size} bytes, {files[rel]['size']} saved",
                    ),
                    True,
                )
            if digests.file_sha256(path) != files[rel]["sha256"]:
                return Problem(_part(rel), "checksum", f"{rel}: sha256 mismatch"), True
    for rel in required_files(expect_data, process_index, process_count):
        if not (step_dir / rel).exists():
            what = "directory is missing" if not (step_dir / _part(rel)).exists() else "is missing"
            name = _part(rel) + "/" if "directory" in what else rel
            return Problem(_part(rel), "missing", f"{name} {what}"), sealed
    if expect_data and integrity is not None:
        name = data_state_file(process_index, process_count)
        want = integrity["data_sha256"].get(name)
        if want is not None:
            try:
                got = sha256_bytes((step_dir / "data" / name).read_bytes())
            except OSError as e:
                return Problem("data", "unreadable", f"{name}: {e}"), sealed
            if got != want:
                return Problem(
                    "data", "data-state", f"{name}: iterator state checksum mismatch"
                ), sealed
    return None, sealed


def set_aside(step_dir: epath.Path, reason: str) -> epath.Path:
    """Rename ``<step>`` to ``<step>.damaged-<reason>`` (``-2``, ``-3`` ... if taken)."""
    target = step_dir.parent / f"{step_dir.name}{DAMAGED_TAG}{reason}"
    n = 2
    while target.exists():
        target = step_dir.parent / f"{step_dir.name}{DAMAGED_TAG}{reason}-{n}"
        n += 1
    step_dir.rename(target)
    return target


def one_line(e: BaseException, limit: int = 240) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------ verify CLI


def step_dirs(checkpoints: epath.Path) -> tuple[list[tuple[int, epath.Path]], list[epath.Path]]:
    """Numbered step directories (ascending) and those set aside as damaged."""
    steps, aside = [], []
    if not checkpoints.is_dir():
        return steps, aside
    for p in checkpoints.iterdir():
        if p.name.isdigit() and p.is_dir():
            steps.append((int(p.name), p))
        elif DAMAGED_TAG in p.name:
            aside.append(p)
    return sorted(steps), sorted(aside, key=lambda p: p.name)


def verify_report(target: str) -> tuple[list[str], bool]:
    """Lines for ``--verify_checkpoint=<workdir>[/checkpoints/<step>]``; True if all OK."""

    path = workdir_lib.resolve(target)
    if path.name.isdigit() and path.parent.name == "checkpoints":
        steps, aside = [(int(path.name), path)], []
        if not path.exists():
            return [f"error: {path}: no such checkpoint"], False
    else:
        root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        if not root.is_dir():
            return [f"error: {path}: no checkpoints/ directory"], False
        steps, aside = step_dirs(root)
        if not steps and not aside:
            return [f"error: {root}: holds no checkpoint"], False
    lines, ok = [], True
    for step, step_dir in steps:
        problem, sealed = check_step(step_dir)
        if problem:
            ok = False
            lines.append(
                f"step {step}: DAMAGED: {problem.part}: {problem.reason}: {problem.detail}"
            )
        elif sealed:
            lines.append(f"step {step}: OK (every file matches its sha256)")
        else:
            lines.append(
                f"step {step}: OK (no file checksums: the run stopped before writing them; "
                "parts present, iterator state checked)"
            )
    for p in aside:
        ok = False
        reason = p.name.split(DAMAGED_TAG, 1)[1]
        lines.append(f"{p.name}: DAMAGED (set aside earlier: {reason})")
    return lines, ok


# ------------------------------------------------------------------------------ resume


def agree(problem: Problem | None) -> Problem | None:
    """Multi-process: a checkpoint damaged for one process is damaged for all."""

    if jax.process_count() == 1:
        return problem

    flags = multihost_utils.process_allgather(np.array([problem is not None], np.int32))
    if problem is None and bool(np.any(flags)):
        return Problem("checkpoint", "damaged-elsewhere", "unusable for another process")
    return problem


def state_is_finite(state: dict) -> bool:
    """Whether the trainable params, optimizer state and moving average are all finite."""
    tree = step_lib.finite_parts(state)
    return bool(jax.device_get(jax.jit(step_lib.tree_is_finite)(tree)))
