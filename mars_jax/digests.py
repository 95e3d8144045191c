"""SHA-256 of files, read in blocks: the one digest of shards, checkpoints, weights and assets."""

from __future__ import annotations

import hashlib
import os
from typing import Any

BLOCK_BYTES = 1 << 22


def file_sha256(path: str | os.PathLike | Any) -> str:
    """Hex SHA-256 of a file: a local path, or any path object with ``open`` (``epath``)."""
    h = hashlib.sha256()
    with path.open("rb") if hasattr(path, "open") else open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK_BYTES), b""):
            h.update(block)
    return h.hexdigest()
