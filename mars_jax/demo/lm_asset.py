"""The demo LLM as shipped (``mars_jax/assets/demo_lm``) and as the trainer loads it.

The demo model has the Qwen layout, so its embedding and text head span all 151,936 text
ids (2 × 39 M numbers at width 256), of which the demo's text uses a few hundred. The asset
keeps only what the pretraining taught:

- ``params.safetensors`` (bf16, ~7 MB): the 4 layers, the final norm, the embedding rows and
  head columns of ``token_ids`` (the ids the corpus uses), and ``other_column``: the one head
  column shared by every other id (the pretraining's softmax ran over all 151,936 ids with
  these tied, so the full head gives the same text distribution);
- ``model_config.json``, ``lm_info.json`` (seed of the random rows, corpus, final loss),
  ``train_log.jsonl``.

``expand`` rebuilds the full frozen tree: random rows from ``init_seed`` (the same normal(0.02)
init as a random base) where the corpus never looked, the trained rows elsewhere.
``train_lib.base.ensure_demo_base`` writes it once as a base checkpoint for
``base.checkpoint``; the result is bit-identical on every machine (threefry random bits).
"""

from __future__ import annotations

import json
import os

import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from mars_jax.model import params as params_lib
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import vocab

DEMO_LM_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "demo_lm")
PARAMS_FILE = "params.safetensors"
INFO_FILE = "lm_info.json"
CONFIG_FILE = "model_config.json"


def demo_lm_dir() -> str:
    if not os.path.exists(os.path.join(DEMO_LM_DIR, PARAMS_FILE)):
        raise FileNotFoundError(
            f"the demo LLM is missing at {DEMO_LM_DIR}; rebuild it with "
            "`python -m mars_jax.demo.train_lm --out=mars_jax/assets/demo_lm`"
        )
    return DEMO_LM_DIR


def flatten_layers(layers: dict) -> dict[str, np.ndarray]:
    """``{"layers.text_attn.q": array, ...}`` of a frozen ``layers`` subtree."""
    flat = {}
    for name, leaf in layers.items():
        if isinstance(leaf, dict):
            flat.update({f"layers.{name}.{k}": v for k, v in leaf.items()})
        else:
            flat[f"layers.{name}"] = leaf
    return flat


def unflatten_layers(flat: dict[str, np.ndarray]) -> dict:
    layers: dict = {}
    for key, value in flat.items():
        parts = key.split(".")[1:]
        node = layers
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return layers


def read_asset(asset_dir: str) -> tuple[ModelConfig, dict, dict]:
    """``(config, tensors, info)`` of an asset folder; tensors as stored (bf16)."""
    with open(os.path.join(asset_dir, CONFIG_FILE)) as f:
        cfg = ModelConfig.from_dict(json.load(f))
    with open(os.path.join(asset_dir, INFO_FILE)) as f:
        info = json.load(f)
    tensors = load_file(os.path.join(asset_dir, PARAMS_FILE))
    return cfg, tensors, info


def token_ids(asset_dir: str | None = None) -> tuple[int, ...]:
    """The ids with their own head column (``model.text_head_ids`` of a model on the asset)."""
    path = os.path.join(asset_dir or demo_lm_dir(), PARAMS_FILE)
    with safe_open(path, framework="numpy") as f:
        return tuple(int(i) for i in np.sort(f.get_tensor("token_ids")))


def expand(cfg: ModelConfig, tensors: dict, init_seed: int) -> dict:
    """The full frozen tree (host arrays in ``cfg.frozen_dtype``) of a compact asset."""
    full = jax.device_get(params_lib.init_frozen(cfg, jax.random.key(init_seed)))
    dtype = np.dtype(cfg.frozen_dtype) if cfg.frozen_dtype != "bfloat16" else ml_dtypes.bfloat16
    ids = np.asarray(tensors["token_ids"], np.int64)
    embed = np.array(full["embed"], dtype)
    embed[ids] = tensors["embed_rows"].astype(dtype)
    head = np.repeat(tensors["other_column"].astype(dtype)[:, None], vocab.TEXT_VOCAB_SIZE, 1)
    head[:, ids] = tensors["head_columns"].astype(dtype)
    layers = unflatten_layers({k: v for k, v in tensors.items() if k.startswith("layers.")})
    return {
        "embed": embed,
        "layers": jax.tree.map(lambda x: np.asarray(x, dtype), layers),
        "final_norm": np.asarray(tensors["final_norm"], dtype),
        "text_head": head,
    }
