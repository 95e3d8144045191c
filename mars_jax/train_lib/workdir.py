"""Paths of a run's files, in a local or remote (``gs://``, ``s3://``) workdir.

Every path the trainer touches goes through ``resolve``: an ``etils.epath.Path`` that Orbax
accepts as it is (``gs://`` through tensorstore for arrays and epath for metadata; epath
needs ``gcsfs`` installed for Google Cloud Storage). URLs are kept verbatim; local paths are
made absolute (``os.path.abspath`` would turn ``gs://b/run`` into ``$PWD/gs:/b/run``).

Object stores cannot append to a file, and TensorBoard's writer (tensorboardX) reaches
``gs://`` only with ``google-cloud-storage``. So with a remote workdir the append-only logs
(``metrics.jsonl``, ``tensorboard/``) are written to a local directory (``LogDirs.local``)
and uploaded whole to the workdir (``LogDirs.remote``) now and then and when the run ends;
an existing remote ``metrics.jsonl`` is fetched first, so a resumed run keeps appending.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile

from etils import epath

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL (``gs://bucket/run``), False for a local path."""
    return bool(_URL.match(os.fspath(path)))


def resolve(path: str | os.PathLike) -> epath.Path:
    """``path`` as an epath: URLs unchanged, local paths absolute (``~`` expanded)."""
    path = os.fspath(path)
    if not path:
        raise ValueError("empty path: set --workdir (or the config key naming this path)")
    if is_remote(path):
        return epath.Path(path)
    return epath.Path(os.path.abspath(os.path.expanduser(path)))


@dataclasses.dataclass(frozen=True)
class LogDirs:
    """Where ``metrics.jsonl`` and ``tensorboard/`` are written, and where they are uploaded."""

    local: epath.Path
    remote: epath.Path | None  # None: the workdir is local and ``local`` is the workdir


def local_mirror_root() -> str:
    return os.path.join(tempfile.gettempdir(), "mars_jax_logs")


def log_dirs(workdir: str | os.PathLike, local_root: str | None = None) -> LogDirs:
    """The workdir itself when it is local; else ``<local_root>/<scheme>/<bucket/path>``."""
    root = resolve(workdir)
    if not is_remote(workdir):
        return LogDirs(local=root, remote=None)
    scheme, rest = os.fspath(workdir).split("://", 1)
    parts = [p for p in rest.split("/") if p and p not in (".", "..")]
    local = epath.Path(local_root or local_mirror_root()).joinpath(scheme, *parts)
    return LogDirs(local=local, remote=root)


def upload_tree(local: epath.Path, remote: epath.Path) -> list[str]:
    """Copy every file under ``local`` to the same relative path under ``remote``."""
    copied = []
    for dirpath, _, filenames in os.walk(os.fspath(local)):
        rel = os.path.relpath(dirpath, os.fspath(local))
        target_dir = remote if rel == "." else remote.joinpath(*rel.split(os.sep))
        for name in sorted(filenames):
            target_dir.mkdir(parents=True, exist_ok=True)
            epath.Path(dirpath, name).copy(target_dir / name, overwrite=True)
            copied.append(os.path.join(rel, name) if rel != "." else name)
    return copied


def fetch_file(remote: epath.Path, local: epath.Path) -> bool:
    """Copy ``remote`` over ``local`` when it exists there; True if it did."""
    if not remote.exists():
        return False
    local.parent.mkdir(parents=True, exist_ok=True)
    remote.copy(local, overwrite=True)
    return True
