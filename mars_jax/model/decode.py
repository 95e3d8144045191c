"""KV-cache decoding: a static cache, a prefill of the prompt, and one-token steps.

The cache holds the rotated keys and the values of every layer for `max_len` slots, and
which slots hold a real token. `prefill` runs the prompt (static layout or general path) and
fills slots `[0, L)`; `decode_step` appends one token per row at slot `cache_index`, routing
it to its expert by id (both experts run on the single token; `where` selects). Prompts of a
batch are left-padded to one length, so every row writes the same slot; padded slots are
never attended. Logits span all 160,136 ids; `vision_only=True` skips the 151,936-way text
head (its range is -inf), which is what image-code samplers need.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mars_jax.model import heads, layers, mars
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import layout as layout_lib
from mars_jax.tokens import vocab


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> dict:
    """Empty cache: `k`, `v` `[Ly, B, max_len, KV, Dh]` (compute dtype), `valid` `[B, max_len]`,
    `opener` `[B]`: the position of the latest `<img>` / `<lo>` fed (-1: none; for
    `ModelConfig.image_pos_grid`)."""
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    dtype = jnp.dtype(cfg.compute_dtype)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "valid": jnp.zeros((batch, max_len), bool),
        "opener": jnp.full((batch,), -1, jnp.int32),
    }


def _logits(frozen, trainable, h_BxD: jax.Array, cfg: ModelConfig, vision_only: bool):
    return heads.logits_from_hidden(frozen, trainable, h_BxD[:, None], cfg, vision_only)[:, 0]


def prefill(
    frozen: dict,
    trainable: dict,
    cache: dict,
    tokens_BxL: jax.Array,
    positions_BxL: jax.Array,
    valid_BxL: jax.Array,
    layout: layout_lib.Layout | None,
    cfg: ModelConfig,
    vision_only: bool = False,
) -> tuple[jax.Array, dict]:
    """Run the prompt, write its keys/values to slots `[0, L)`; logits `[B, 160136]` of slot L-1.

    `vision_only` skips the text head (text range -inf), for samplers that draw image codes.
    """
    length = tokens_BxL.shape[1]
    if length > cache["valid"].shape[1]:
        raise ValueError(f"prompt length {length} exceeds the cache's {cache['valid'].shape[1]}")
    hidden, (k, v) = mars.forward_segments(
        frozen, trainable, tokens_BxL, positions_BxL, valid_BxL, layout, cfg, return_kv=True
    )
    zeros5 = (0, 0, 0, 0, 0)
    valid_BxL = jnp.asarray(valid_BxL, bool)
    tokens_BxL, positions_BxL = jnp.asarray(tokens_BxL), jnp.asarray(positions_BxL)
    _, opener = mars.image_offsets(tokens_BxL, positions_BxL, valid_BxL, cache["opener"])
    cache = {
        "k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), zeros5),
        "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), zeros5),
        "valid": jax.lax.dynamic_update_slice(cache["valid"], valid_BxL, (0, 0)),
        "opener": opener[:, -1],
    }
    return _logits(frozen, trainable, hidden[-1][:, -1], cfg, vision_only), cache


def decode_step(
    frozen: dict,
    trainable: dict,
    cache: dict,
    token_B: jax.Array,
    position_B: jax.Array,
    cache_index: jax.Array | int,
    cfg: ModelConfig,
    vision_only: bool = False,
) -> tuple[jax.Array, dict]:
    """Append one token per row at slot `cache_index`; returns its logits `[B, 160136]`.

    `position_B` is each row's rotary position (its count of earlier valid tokens);
    `cache_index` must be a slot not yet filled (the new key is attended to once, from the
    step itself, and only then written); `vision_only` skips the text head (text range -inf).
    """
    dtype = jnp.dtype(cfg.compute_dtype)
    frozen = mars.with_unfrozen(frozen, trainable)
    token_B = jnp.asarray(token_B, jnp.int32)
    tokens_Bx1 = token_B[:, None]
    b = token_B.shape[0]
    is_vision_N = vocab.is_vision(token_B)
    cos_sin = layers.rotary_cos_sin(jnp.asarray(position_B), cfg.head_dim, cfg.rope_base)
    x0 = mars.embed(frozen, trainable, tokens_Bx1, mars.MIXED, dtype)
    positions_Bx1 = jnp.asarray(position_B, jnp.int32)[:, None]
    offsets_Bx1, opener_Bx1 = mars.image_offsets(
        tokens_Bx1, positions_Bx1, jnp.ones((b, 1), bool), cache["opener"]
    )
    x0 = mars.add_image_positions(x0, trainable, tokens_Bx1, offsets_Bx1, cfg)
    masks = [cache["valid"][:, None, :], jnp.ones((b, 1, 1), bool)]

    def layer(x, per_layer):
        frozen_layer, trainable_layer, k_cache, v_cache = per_layer
        q, k, v = mars.segment_qkv(
            x, mars.MIXED, frozen_layer, trainable_layer, cos_sin, is_vision_N, cfg
        )
        k, v = k.astype(k_cache.dtype), v.astype(v_cache.dtype)
        a = mars.attend_blocks(q, [(k_cache, v_cache), (k, v)], masks)
        x = mars.segment_finish(x, a, mars.MIXED, frozen_layer, trainable_layer, is_vision_N, cfg)
        return x, (k, v)

    xs = (frozen["layers"], trainable["layers"], cache["k"], cache["v"])
    x, (k_new, v_new) = jax.lax.scan(layer, x0, xs)
    index = jnp.asarray(cache_index, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    slot5 = (zero, zero, index, zero, zero)
    cache = {
        "k": jax.lax.dynamic_update_slice(cache["k"], k_new, slot5),
        "v": jax.lax.dynamic_update_slice(cache["v"], v_new, slot5),
        "valid": jax.lax.dynamic_update_slice(
            cache["valid"], jnp.ones((b, 1), bool), (zero, index)
        ),
        "opener": opener_Bx1[:, 0],
    }
    h = layers.rms_norm(x[:, 0], frozen["final_norm"], cfg.norm_eps)
    return _logits(frozen, trainable, h, cfg, vision_only), cache
