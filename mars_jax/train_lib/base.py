"""The frozen LLM of a run: where it comes from, how it is placed on the mesh, its identity.

``base.checkpoint`` names a converted Qwen base (``python -m mars_jax.convert``); when empty,
the frozen params are a random init from ``base.seed`` (tiny/demo presets). The identity
``{"source", "hash"}`` is stored in every checkpoint and checked on resume.

The hash is computed on the devices, shard by shard, without gathering: for every leaf the
bit patterns are summed with position-dependent odd weights in wrap-around uint32 arithmetic
(associative and commutative, hence independent of the mesh), then the per-leaf sums with
paths, shapes and dtypes go through SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_base_exists(path: str) -> None:
    """Fail before compiling when ``base.checkpoint`` is set but missing."""
    if path and not os.path.exists(path):
        raise FileNotFoundError(
            f"base.checkpoint={path!r} does not exist: convert a Qwen checkpoint with "
            "`python -m mars_jax.convert` or fix the path"
        )


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    words = jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32)
    linear = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(x.ndim)):
        idx = jax.lax.broadcasted_iota(jnp.uint32, x.shape, dim)
        linear = linear + idx * jnp.uint32(stride % 2**32)
        stride *= x.shape[dim]
    weight = linear * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.sum(words * weight, dtype=jnp.uint32)


_fingerprints = jax.jit(lambda tree: jax.tree.map(_leaf_fingerprint, tree))


def frozen_hash(frozen: Any) -> str:
    """Content hash of the frozen params (mesh-independent)."""
    sums = _fingerprints(frozen)
    sums = jax.tree.map(lambda s: int(np.asarray(jax.device_get(s))), sums)
    flat = jax.tree_util.tree_flatten_with_path(frozen)[0]
    described = [
        (jax.tree_util.keystr(p), list(x.shape), str(x.dtype), s)
        for (p, x), s in zip(flat, jax.tree.leaves(sums), strict=True)
    ]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()


def identity(source: str, frozen: Any) -> dict:
    return {"source": source, "hash": frozen_hash(frozen)}


def to_bf16(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )
