"""Batch sharding of the layer activations, when the model runs under a mesh.

The weights are sharded FSDP-style (`train_lib/sharding.py`: the embedding axis over
`fsdp`) and the batch over `("data", "fsdp")`. Inside a layer the activations are flattened
to `[tokens, features]`; without a hint XLA's partitioner may keep their token axis whole and
split features instead, so that an MLP's `[tokens, 11008]` hidden state of the *global*
micro-batch lands on every device (stage III at 1,024 px: 11.7 GB per device and layer
pass). `tokens` pins the leading (batch or token) axis to the batch axes, which makes XLA
all-gather the weights instead: FSDP. Outside a mesh, or when the axis does not split
evenly, it is the identity.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import PartitionSpec

BATCH_AXES = ("data", "fsdp")  # as `train_lib.sharding.BATCH_AXES`


def num_shards() -> int:
    """How many batch shards the current mesh has (1 without a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return 1
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def tokens(x: jax.Array, axis: int = 0) -> jax.Array:
    """`x` with axis `axis` sharded over the mesh's batch axes (if there is a mesh)."""
    shards = num_shards()
    if shards == 1 or x.shape[axis] % shards:
        return x
    spec = [None] * x.ndim
    spec[axis] = BATCH_AXES
    mesh = jax.sharding.get_abstract_mesh()
    if any(mesh._name_to_type[a] == jax.sharding.AxisType.Explicit for a in BATCH_AXES):
        return jax.sharding.reshard(x, PartitionSpec(*spec))  # sharding in types: move it
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))
