"""VQ-GAN checkpoints: ``params.safetensors`` + ``vq_config.json``, and a content hash.

A VQ checkpoint is small and read by every stage (data preparation, sampling), so it is a
plain safetensors file with dotted parameter names (``encoder.down.0.block.0.conv1.kernel``)
beside the config as JSON, readable without JAX. ``vq_identity`` hashes the config and every
tensor; the data manifest records it so shards and the VQ that decodes them cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

import jax
import numpy as np
import safetensors.numpy

from mars_jax.vq import model
from mars_jax.vq.config import VQConfig

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "vq_config.json"
FORMAT = "mars_jax.vq/1"


class VQCheckpointError(ValueError):
    """A VQ checkpoint or imported state dict is missing, incomplete or misshaped."""


def _key_name(entry: Any) -> str:
    return str(getattr(entry, "key", getattr(entry, "idx", entry)))


def flatten_params(params: model.Params) -> dict[str, np.ndarray]:
    """Nested params → ``{"a.b.0.c": ndarray}`` (float32, host memory)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        ".".join(_key_name(k) for k in path): np.asarray(leaf, dtype=np.float32)
        for path, leaf in leaves
    }


def param_shapes(cfg: VQConfig) -> dict[str, tuple[int, ...]]:
    """Dotted name → shape of every parameter of ``cfg``."""
    paths = jax.tree_util.tree_flatten_with_path(model.abstract_params(cfg))[0]
    return {".".join(_key_name(k) for k in path): spec.shape for path, spec in paths}


def unflatten_params(
    cfg: VQConfig, flat: dict[str, np.ndarray], source: str, allow_extra: bool = False
) -> model.Params:
    """Fills the parameter tree of ``cfg`` from dotted names, checking every name and shape."""
    abstract = model.abstract_params(cfg)
    paths, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    names = [".".join(_key_name(k) for k in path) for path, _ in paths]
    missing = [n for n in names if n not in flat]
    if missing:
        raise VQCheckpointError(
            f"{source}: {len(missing)} parameter(s) missing, e.g. {missing[:5]}"
        )
    extra = sorted(set(flat) - set(names))
    if extra and not allow_extra:
        raise VQCheckpointError(
            f"{source}: {len(extra)} unexpected tensor(s) for this config, e.g. {extra[:5]}"
        )
    leaves = []
    for name, (_, spec) in zip(names, paths, strict=True):
        value = np.asarray(flat[name])
        if value.shape != spec.shape:
            raise VQCheckpointError(
                f"{source}: tensor {name!r} has shape {value.shape}, expected {spec.shape}"
            )
        if not np.all(np.isfinite(value)):
            raise VQCheckpointError(f"{source}: tensor {name!r} holds non-finite values")
        leaves.append(jax.numpy.asarray(value, dtype=spec.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def vq_identity(cfg: VQConfig, params: model.Params) -> str:
    """SHA-256 (hex, first 16 bytes) over the config and every tensor's name, shape and bytes."""
    h = hashlib.sha256(cfg.to_json().encode())
    for name, value in sorted(flatten_params(params).items()):
        h.update(name.encode())
        h.update(str(value.shape).encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()[:32]


def _atomic_write(path: str, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_vq(directory: str, cfg: VQConfig, params: model.Params) -> str:
    """Writes the checkpoint (each file atomically) and returns its identity."""
    os.makedirs(directory, exist_ok=True)
    flat = flatten_params(params)
    identity = vq_identity(cfg, params)
    _atomic_write(
        os.path.join(directory, PARAMS_FILE),
        lambda p: safetensors.numpy.save_file(flat, p, metadata={"identity": identity}),
    )
    meta = {"format": FORMAT, "identity": identity, "config": json.loads(cfg.to_json())}

    def write_json(p):
        with open(p, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)

    _atomic_write(os.path.join(directory, CONFIG_FILE), write_json)
    return identity


def load_config(directory: str) -> VQConfig:
    path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(path) as f:
            meta = json.load(f)
    except OSError as e:
        raise VQCheckpointError(f"cannot read VQ config {path!r}: {e}") from e
    except json.JSONDecodeError as e:
        raise VQCheckpointError(f"{path!r} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise VQCheckpointError(f"{path!r} is not a {FORMAT} VQ config")
    try:
        return VQConfig.from_dict(meta["config"], source=path)
    except (TypeError, ValueError) as e:
        raise VQCheckpointError(f"{path!r}: invalid config: {e}") from e


def recorded_identity(directory: str) -> str | None:
    """The identity a checkpoint's config file records (no weights read); None when the
    directory holds no VQ config."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("identity")


def load_vq(directory: str, verify: bool = True) -> tuple[VQConfig, model.Params]:
    """Reads a checkpoint written by ``save_vq``; ``verify`` re-hashes it against its identity."""
    cfg = load_config(directory)
    path = os.path.join(directory, PARAMS_FILE)
    try:
        flat = safetensors.numpy.load_file(path)
    except (OSError, safetensors.SafetensorError) as e:
        raise VQCheckpointError(f"cannot read VQ params {path!r}: {e}") from e
    params = unflatten_params(cfg, flat, source=path)
    if verify:
        expected = recorded_identity(directory)
        actual = vq_identity(cfg, params)
        if expected != actual:
            raise VQCheckpointError(
                f"{directory!r}: content hash {actual} does not match the recorded identity "
                f"{expected} (corrupted or mixed files)"
            )
    return cfg, params
