"""Device mesh and logical-axis sharding rules for the trainer.

Parameters carry logical axis names (``mars_jax.model.params.logical_axes``); the config's
``mesh.rules`` map each name to mesh axes of ``('data', 'fsdp', 'tensor')``. Batches are
sharded over ``('data', 'fsdp')`` on their leading axis. Everything here is a plain function
of the config and the device list, so a mesh can be checked before anything is compiled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, Any]]


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replace the one ``-1`` in ``shape`` by what is left of ``num_devices``; check the product."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh.shape must have {len(MESH_AXES)} entries {MESH_AXES}, got {shape}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh.shape may contain at most one -1, got {shape}")
    known = math.prod(s for s in shape if s != -1)
    if known <= 0 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape entries must be positive or -1, got {shape}")
    if -1 in shape:
        if num_devices % known:
            raise ValueError(
                f"mesh.shape {shape} does not fit {num_devices} devices: "
                f"{num_devices} is not divisible by {known}"
            )
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh.shape {shape} needs {math.prod(shape)} devices but {num_devices} are available"
        )
    return shape


def make_mesh(
    shape: Sequence[int],
    dcn_shape: Sequence[int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Build the ``('data', 'fsdp', 'tensor')`` mesh with Auto axes.

    ``dcn_shape`` (e.g. ``(num_slices, 1, 1)``) makes a hybrid mesh for multi-slice or
    multi-node runs: the product ``shape * dcn_shape`` is the full mesh, and the axes with
    ``dcn_shape > 1`` are laid out across the slow network (data parallel), the rest inside a
    slice/node (ICI/NVLink). ``shape`` is then the per-slice shape (``-1`` allowed).
    """
    devices = list(jax.devices() if devices is None else devices)
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if dcn_shape is None or math.prod(dcn_shape) == 1:
        resolved = resolve_mesh_shape(shape, len(devices))
        return jax.make_mesh(resolved, MESH_AXES, axis_types=axis_types, devices=devices)
    dcn_shape = tuple(int(s) for s in dcn_shape)
    num_granules = math.prod(dcn_shape)
    if len(devices) % num_granules:
        raise ValueError(
            f"mesh.dcn_shape {dcn_shape} needs a device count divisible by {num_granules}, "
            f"got {len(devices)} devices"
        )
    ici_shape = resolve_mesh_shape(shape, len(devices) // num_granules)
    from jax.experimental import mesh_utils  # only hybrid meshes need it

    # TPU slices are the granules of multi-slice runs; elsewhere (GPU/CPU nodes) processes are.
    process_is_granule = devices[0].platform != "tpu"
    granules = (
        len({d.process_index for d in devices})
        if process_is_granule
        else len({d.slice_index for d in devices})
    )
    if granules != num_granules:
        kind = "processes" if process_is_granule else "TPU slices"
        raise ValueError(
            f"mesh.dcn_shape {dcn_shape} asks for {num_granules} {kind}, but the job has "
            f"{granules}; set mesh.dcn_shape=(1, 1, 1) for a single host or slice"
        )
    device_array = mesh_utils.create_hybrid_device_mesh(
        ici_shape, dcn_shape, devices=devices, process_is_granule=process_is_granule
    )
    return Mesh(device_array, MESH_AXES, axis_types=axis_types)


def _rules_dict(rules: Rules) -> dict[str, Any]:
    out = {}
    for entry in rules:
        name, axes = entry
        out[str(name)] = tuple(axes) if isinstance(axes, list) else axes
    return out


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(
    logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules
) -> PartitionSpec:
    """PartitionSpec for one array from its logical axis names.

    A mesh axis is used at most once per array (first dimension wins), and a dimension whose
    size is not divisible by the mesh axes it maps to is replicated instead (tiny test models
    on many devices); the 7B presets divide evenly, which ``tests/test_configs.py`` checks.
    """
    table = _rules_dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(logical, shape, strict=True):
        axes = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise KeyError(f"mesh.rules has no entry for logical axis {name!r}")
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        names = tuple(a for a in names if a not in used and mesh.shape[a] > 1)
        if not names or size % _axis_size(mesh, names):
            spec.append(None)
            continue
        used.update(names)
        spec.append(names[0] if len(names) == 1 else names)
    return PartitionSpec(*spec)


def _is_axes_leaf(x: Any) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def tree_shardings(abstract_tree: Any, logical_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of arrays given the matching tree of logical axis tuples."""
    return jax.tree.map(
        lambda axes, x: NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh, rules)),
        logical_tree,
        abstract_tree,
        is_leaf=_is_axes_leaf,
    )


def unsharded_leaves(abstract_tree: Any, shardings: Any, min_size: int) -> list[str]:
    """Paths of leaves with at least ``min_size`` elements that end up fully replicated."""
    out = []
    flat = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
    for (path, x), s in zip(flat, jax.tree.leaves(shardings), strict=True):
        if x.size >= min_size and all(p is None for p in s.spec):
            out.append(jax.tree_util.keystr(path))
    return out


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over ``('data', 'fsdp')``, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_fits(global_batch: int, grad_accum: int, mesh: Mesh, process_count: int) -> None:
    """Fail early (before compiling) when the batch cannot be split as configured."""
    shards = batch_shards(mesh)
    if global_batch % grad_accum:
        raise ValueError(
            f"train.global_batch={global_batch} is not divisible by train.grad_accum={grad_accum}"
        )
    micro = global_batch // grad_accum
    if micro % shards:
        raise ValueError(
            f"train.global_batch={global_batch} / train.grad_accum={grad_accum} = {micro} "
            f"is not divisible by the {shards} batch shards of mesh "
            f"data×fsdp={mesh.shape['data']}×{mesh.shape['fsdp']}"
        )
    if global_batch % process_count:
        raise ValueError(
            f"train.global_batch={global_batch} is not divisible by {process_count} processes"
        )


def global_batch_from_local(
    local_batch: Mapping[str, Mapping[str, np.ndarray]], mesh: Mesh, process_count: int
) -> dict[str, dict[str, jax.Array]]:
    """Per-process numpy slices → global ``jax.Array`` batch sharded over ``('data','fsdp')``.

    Every process holds the same number of rows of each task; the global batch of a task is
    ``process_count`` times its local rows.
    """
    sharding = batch_sharding(mesh)
    out: dict[str, dict[str, jax.Array]] = {}
    for task, arrays in local_batch.items():
        out[task] = {}
        for name, local in arrays.items():
            local = np.asarray(local)
            global_shape = (local.shape[0] * process_count, *local.shape[1:])
            out[task][name] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out
