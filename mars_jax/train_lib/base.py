"""The frozen LLM of a run: the base-checkpoint format, where it comes from, its identity.

A base checkpoint (written by ``python -m mars_jax.convert``) is a folder with
``model_config.json``, ``base_info.json`` (source, family, ``text_rows``: the rows of the
embedding that are real tokens, ``frozen_hash``) and the ``frozen/`` Orbax tree. The
trainable init is not stored: the trainer derives it from the frozen tree
(``params.init_trainable_from_frozen`` with ``text_rows``), on the mesh.

``base.checkpoint`` names such a folder; when empty, the frozen params are a random init
from ``base.seed`` (tiny/demo presets). The identity ``{"source", "hash"}`` is stored in
every checkpoint and checked on resume.

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
import orbax.checkpoint as ocp

from mars_jax import digests
from mars_jax.demo import lm_asset
from mars_jax.model import heads
from mars_jax.model import params as params_lib
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import vocab
from mars_jax.train_lib import workdir as workdir_lib


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


_fingerprint = jax.jit(_leaf_fingerprint)


def frozen_hash(frozen: Any) -> str:
    """Content hash of the frozen params (mesh-independent): sharded arrays on their devices,
    or host arrays (the converter), one leaf at a time."""
    sums = jax.tree.map(lambda x: int(np.asarray(jax.device_get(_fingerprint(x)))), frozen)
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


# ---- the base-checkpoint format ------------------------------------------------------------

CONFIG_FILE = "model_config.json"
INFO_FILE = "base_info.json"


def save_base(out_dir: str, cfg: ModelConfig, frozen: dict, info: dict) -> str:
    """Write a base checkpoint of host arrays; returns the frozen hash."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    digest = frozen_hash(frozen)
    # The arrays are not modified while saving: skip Orbax's defensive host copy, which
    # would double peak memory.
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False))
    )
    ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry))
    ckptr.save(os.path.join(out_dir, "frozen"), args=ocp.args.PyTreeSave(frozen), force=True)
    ckptr.close()
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    with open(os.path.join(out_dir, INFO_FILE), "w") as f:
        json.dump({**info, "frozen_hash": digest}, f, indent=2)
    return digest


def read_info(base_dir: str) -> dict:
    """``base_info.json`` of a base checkpoint."""
    path = os.path.join(base_dir, INFO_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not a base checkpoint (written by convert)")
    with open(path) as f:
        return json.load(f)


def stored_config(base_dir: str, cfg: ModelConfig | None = None) -> ModelConfig:
    """The base's model config; with ``cfg``, ``cfg`` itself once its shapes are checked."""
    config_path = os.path.join(base_dir, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path}: not a base checkpoint (written by convert)")
    with open(config_path) as f:
        stored = ModelConfig.from_dict(json.load(f))
    if cfg is None:
        return stored
    if params_lib.frozen_shapes(cfg) != params_lib.frozen_shapes(stored):
        raise ValueError(f"{config_path}: stored shapes {stored} differ from the requested {cfg}")
    return cfg


def read_frozen(
    base_dir: str, shardings: dict | None = None, cfg: ModelConfig | None = None
) -> dict:
    """The frozen tree of a base checkpoint, restored into ``shardings`` (a frozen tree of
    ``jax.sharding.Sharding``; default one device) in ``cfg.frozen_dtype`` (default: the
    stored config)."""
    base_dir = os.path.abspath(base_dir)
    cfg = stored_config(base_dir, cfg)
    abstract = params_lib.abstract_params(cfg)["frozen"]
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.join(base_dir, "frozen"), target)


def text_rows(base_config: Any) -> int | None:
    """Rows of the base's embedding that are real tokens (None for a random base)."""
    path = base_config.checkpoint
    return int(read_info(os.fspath(workdir_lib.resolve(path)))["text_rows"]) if path else None


def load_frozen(base_config: Any, model_cfg: ModelConfig, shardings: Any) -> tuple[Any, dict]:
    """The frozen LLM of ``base_config`` (``base.checkpoint``, else a random init from
    ``base.seed``) in bf16 on ``shardings``, and its identity ``{"source", "hash"}``."""
    path = base_config.checkpoint
    if not path:
        return _random_base(model_cfg, int(base_config.seed), shardings)
    frozen = read_frozen(path, shardings, cfg=model_cfg)
    frozen = jax.jit(to_bf16, out_shardings=shardings)(frozen)
    source = os.fspath(workdir_lib.resolve(path))
    untied = heads.untied_text_id(frozen["text_head"], model_cfg)
    if untied is not None:
        raise ValueError(
            f"base checkpoint {source}: model.text_head_ids names "
            f"{len(model_cfg.text_head_ids)} ids, but the text-head column of id {untied} "
            f"differs from the shared one of id {heads.tied_text_id(model_cfg)}; this "
            "base's head is not tied that way: set model.text_head_ids=()"
        )
    return frozen, identity(source, frozen)


# The last random base and its identity, for the next run in this process with the same model
# config, seed and shardings: the tests' dozens of short runs drew and hashed ~20 M values each
# time (~2.5 s for the tiny preset, compile included). Arrays are immutable and the step never
# donates them, so sharing them is safe; one entry bounds the memory held.
_LAST_RANDOM_BASE: dict[tuple, tuple[Any, dict]] = {}


def _random_base(model_cfg: ModelConfig, seed: int, shardings: Any) -> tuple[Any, dict]:
    leaves, treedef = jax.tree.flatten(shardings)
    cache_key = (model_cfg, seed, treedef, tuple(leaves))
    if cache_key not in _LAST_RANDOM_BASE:
        _LAST_RANDOM_BASE.clear()
        init = jax.jit(
            lambda rng: to_bf16(params_lib.init_frozen(model_cfg, rng)), out_shardings=shardings
        )
        frozen = init(jax.random.key(seed))
        _LAST_RANDOM_BASE[cache_key] = (frozen, identity(f"random:{seed}", frozen))
    frozen, ident = _LAST_RANDOM_BASE[cache_key]
    return frozen, dict(ident)


def ensure_demo_base(base_config: Any) -> None:
    """With ``base.demo_lm``, write the shipped demo LLM (``mars_jax/assets/demo_lm``) as the
    base checkpoint ``base.checkpoint`` unless an up-to-date one is there (its
    ``base_info.json`` names the asset's sha256). Writing is cheap (seconds) and happens once."""
    if not base_config.demo_lm:
        return
    asset_dir = lm_asset.demo_lm_dir()
    digest = digests.file_sha256(os.path.join(asset_dir, lm_asset.PARAMS_FILE))
    out_dir = os.fspath(workdir_lib.resolve(base_config.checkpoint))
    info_path = os.path.join(out_dir, INFO_FILE)
    if os.path.exists(info_path):
        with open(info_path) as f:
            if json.load(f).get("asset_sha256") == digest:
                return
    cfg, tensors, info = lm_asset.read_asset(asset_dir)
    print(f"writing the demo LLM as a base checkpoint: {out_dir}", flush=True)
    frozen = lm_asset.expand(cfg, tensors, int(info["init_seed"]))
    source = "mars_jax demo LLM (python -m mars_jax.demo.train_lm)"
    info = {"source": source, "family": "qwen", "text_rows": vocab.ENDOFTEXT}
    save_base(out_dir, cfg, frozen, {**info, "asset_sha256": digest})
