"""The one incremental decoder: decode weights, a KV cache, `prefill` and `extend(T tokens)`.

Every sampler runs on this: text-to-image (T = 1 per step), stage-III parallel decoding
(T = k drafted codes per pass), interleaved text and image, captioning. The layer body is
the training forward's (`mars.segment_qkv`, `mars.segment_finish`), so a speed fix to it
reaches training and every sampler at once; attention over the cache is `attention.cached`.

Decoding differs from training in its weights, made once per call by `prepare`:

- the compute dtype (`decode_dtype`: float32 on CPU, where XLA has no fast bf16 matmul);
- unfrozen LLM copies (`ModelConfig.unfreeze`) merged in place of their frozen groups;
- per-layer weights (`unstack_layers`) with fused Q/K/V and gate/up matrices
  (`layers.fuse_projections`): a scan over stacked layers slices (copies) every layer's
  weights in every pass, and a pass of a few tokens runs 2 matmuls where it ran 5;
- the vision head cut to the sampler's codebook, and the next-K adapters fused
  (`heads.fuse_heads`).

The cache holds, per layer, the rotated keys `[R, KV, Dh, S]` and the values
`[R, KV, S, Dh]` of S slots, in the layouts the two attention products read without a
transpose (a `[R, S, KV, Dh]` cache was transposed whole, per layer and step: a third of a
step's time), which slots hold a real token (`valid` `[R, S]`), and the position of the
latest `<img>` / `<lo>` fed (`opener` `[R]`, -1: none; for `ModelConfig.image_pos_grid`).
New keys and values are written first and attended in place, one block. Prompts of a batch
are left-padded to one length, so every row writes the same slots; padded slots are never
attended.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from mars_jax.model import attention, heads, layers, mars
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import layout as layout_lib
from mars_jax.tokens import vocab


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("frozen", "trainable"),
    meta_fields=("compute_dtype", "num_codes"),
)
@dataclasses.dataclass(frozen=True)
class DecodeWeights:
    """Weights ready for decoding (`prepare`).

    `frozen`: `embed`, `final_norm`, `text_head` and `layers`, a list of per-layer trees
    (fused projections; unfrozen copies merged). `trainable`: `vision_embed`, `vision_head`
    (the first `num_codes` columns when cut), per-layer `layers`, and where the model has
    them `nktp_heads` (fused) and `image_pos_embed`.
    """

    frozen: dict
    trainable: dict
    compute_dtype: str
    num_codes: int | None  # vision-head columns kept (None: all 8,200 ids)


def decode_dtype(cfg: ModelConfig, backend: str | None = None) -> str:
    """Compute dtype of decoding: float32 on CPU, else `cfg.compute_dtype`.

    XLA:CPU has no native bfloat16 matmul: on CPU a bf16 pass is slower than the same pass in
    float32, and its cost grows with the tokens fed (demo model, batch 1: a 4-code pass cost
    about twice a 1-code pass in bf16, 1.25 times in float32). The weights are the same values
    either way (bf16 → float32 is exact); only activations and the KV cache are wider.
    """
    backend = backend or jax.default_backend()
    return "float32" if backend == "cpu" else str(cfg.compute_dtype)


def unstack_layers(params: dict) -> dict:
    """`params` with `layers` (stacked `[Ly, ...]`) as a list of per-layer trees."""
    stacked = params["layers"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    return {**params, "layers": [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)]}


def _in_dtype(tree: dict, dtype) -> dict:
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(cast, tree)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _prepare(frozen: dict, trainable: dict, cfg: ModelConfig, num_codes, dtype: str):
    frozen = mars.with_unfrozen(frozen, trainable)
    trainable = {name: w for name, w in trainable.items() if name != "unfrozen_layers"}
    frozen, trainable = _in_dtype(frozen, dtype), _in_dtype(trainable, dtype)
    frozen, trainable = unstack_layers(frozen), unstack_layers(trainable)
    frozen["layers"] = [layers.fuse_projections(x) for x in frozen["layers"]]
    trainable["layers"] = [layers.fuse_projections(x) for x in trainable["layers"]]
    if num_codes:
        trainable["vision_head"] = trainable["vision_head"][:, :num_codes]
    if heads.HEADS in trainable:
        adapters = trainable[heads.HEADS]
        trainable[heads.HEADS] = heads.fuse_heads(adapters, adapters["down"].shape[0] + 1)
    return frozen, trainable


def prepare(
    frozen: dict,
    trainable: dict,
    cfg: ModelConfig,
    num_codes: int | None = None,
    compute_dtype: str | None = None,
) -> DecodeWeights:
    """The decode's copy of the weights, made once for many decode calls.

    `num_codes`: keep only the vision head's first columns (a sampler's codebook; its logits
    are all an image-code sampler reads); None keeps the whole head (text and interleaved
    decoding). `compute_dtype`: default `decode_dtype(cfg)`.
    """
    dtype = compute_dtype or decode_dtype(cfg)
    if cfg.nktp_k > 1:
        heads.check_heads(cfg, trainable)
    f, t = _prepare(frozen, trainable, cfg, num_codes, dtype)
    return DecodeWeights(frozen=f, trainable=t, compute_dtype=dtype, num_codes=num_codes)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: str) -> dict:
    """An empty cache of `max_len` slots for `batch` rows (see the module docstring)."""
    k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, max_len)
    v_shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    return {
        "k": [jnp.zeros(k_shape, dtype) for _ in range(cfg.num_layers)],
        "v": [jnp.zeros(v_shape, dtype) for _ in range(cfg.num_layers)],
        "valid": jnp.zeros((batch, max_len), bool),
        "opener": jnp.full((batch,), -1, jnp.int32),
    }


def cache_keys_values(cache: dict) -> tuple[jax.Array, jax.Array]:
    """The cache's rotated keys and values as `[Ly, R, S, KV, Dh]` each (the layout of the
    training forward's `return_kv`), whatever layout the cache keeps them in."""
    keys = jnp.stack([jnp.transpose(k, (0, 3, 1, 2)) for k in cache["k"]])
    values = jnp.stack([jnp.transpose(v, (0, 2, 1, 3)) for v in cache["v"]])
    return keys, values


def extend(
    weights: DecodeWeights,
    cache: dict,
    tokens_RxT: jax.Array,
    positions_RxT: jax.Array,
    valid_RxT: jax.Array,
    start: jax.Array | int,
    cfg: ModelConfig,
    modality: str = mars.MIXED,
) -> tuple[jax.Array, dict]:
    """Feed T tokens per row at cache slots `[start, start + T)`: final-normed `[R, T, D]`.

    New tokens attend to the valid cache slots before `start` and causally to each other;
    slots at or after `start` (e.g. rejected drafts) are ignored and overwritten. `start` is
    one slot for every row, or `[R]`, one per row (rows that advance at their own pace, as
    stage III's exact mode).
    `modality`: `"text"` / `"vision"` when every token has it (one expert runs), else
    `"mixed"` (both run, `where` selects). T = 1 is the plain next-token step.
    """
    cfg = cfg.replace(compute_dtype=weights.compute_dtype)
    frozen, trainable = weights.frozen, weights.trainable
    tokens_RxT = jnp.asarray(tokens_RxT, jnp.int32)
    positions_RxT = jnp.asarray(positions_RxT, jnp.int32)
    valid_RxT = jnp.asarray(valid_RxT, bool)
    r, t = tokens_RxT.shape
    slots = cache["valid"].shape[1]
    start = jnp.asarray(start, jnp.int32)
    start_R = jnp.broadcast_to(start, (r,))
    is_vision_N = vocab.is_vision(tokens_RxT.reshape(-1))
    cos_sin = layers.rotary_cos_sin(positions_RxT.reshape(-1), cfg.head_dim, cfg.rope_base)
    valid_RxS = write_slots(cache["valid"], valid_RxT, start, slot_axis=1)
    # Query t sees the valid slots up to its own (slots past start + T may hold old drafts).
    visible_RxTxS = valid_RxS[:, None, :] & (
        jnp.arange(slots)[None, None, :] <= start_R[:, None, None] + jnp.arange(t)[None, :, None]
    )
    x = mars.embed(frozen, trainable, tokens_RxT, modality, weights.compute_dtype)
    offsets_RxT, opener_RxT = mars.image_offsets(
        tokens_RxT, positions_RxT, valid_RxT, cache["opener"]
    )
    x = mars.add_image_positions(x, trainable, tokens_RxT, offsets_RxT, cfg)
    k_cache, v_cache = [], []
    for frozen_layer, trainable_layer, kT_old, v_old in zip(
        frozen["layers"], trainable["layers"], cache["k"], cache["v"], strict=True
    ):
        q, k, v = mars.segment_qkv(
            x, modality, frozen_layer, trainable_layer, cos_sin, is_vision_N, cfg
        )
        # [R, T, KV, Dh] → the cache layouts, written at slots [start, start + T).
        kT = jnp.transpose(k, (0, 2, 3, 1)).astype(kT_old.dtype)
        v = jnp.transpose(v, (0, 2, 1, 3)).astype(v_old.dtype)
        kT = write_slots(kT_old, kT, start, slot_axis=3)
        v = write_slots(v_old, v, start, slot_axis=2)
        a = attention.cached(q, kT, v, visible_RxTxS)
        x = mars.segment_finish(x, a, modality, frozen_layer, trainable_layer, is_vision_N, cfg)
        k_cache.append(kT)
        v_cache.append(v)
    cache = {"k": k_cache, "v": v_cache, "valid": valid_RxS, "opener": opener_RxT[:, -1]}
    return layers.rms_norm(x, frozen["final_norm"], cfg.norm_eps), cache


def write_slots(
    cache_Rx: jax.Array, new_Rx: jax.Array, start: jax.Array, slot_axis: int
) -> jax.Array:
    """`new` written into `cache` from slot `start` on along `slot_axis` (axis 0: rows);
    `start` is a scalar (one slice for the batch) or `[R]` (each row its own)."""

    def write(cache, new, s, axis):
        at = tuple(s if a == axis else jnp.zeros_like(s) for a in range(cache.ndim))
        return jax.lax.dynamic_update_slice(cache, new, at)

    if start.ndim == 0:
        return write(cache_Rx, new_Rx, start, slot_axis)
    return jax.vmap(functools.partial(write, axis=slot_axis - 1))(cache_Rx, new_Rx, start)


def prefill(
    weights: DecodeWeights,
    cache: dict,
    tokens_RxP: jax.Array,
    positions_RxP: jax.Array,
    valid_RxP: jax.Array,
    cfg: ModelConfig,
    text_len: int = 0,
) -> tuple[jax.Array, dict]:
    """`extend` with a whole prompt from slot 0.

    `text_len`: a prompt whose first `text_len` tokens are its text slot and the rest vision
    tokens (`<img>`, low-res codes) runs each expert on its own part only (half the FLOPs of
    running both on every token); 0: one mixed pass.
    """
    if not text_len:
        return extend(weights, cache, tokens_RxP, positions_RxP, valid_RxP, 0, cfg)
    parts = ((slice(0, text_len), layout_lib.TEXT), (slice(text_len, None), layout_lib.VISION))
    for (cut, modality), start in zip(parts, (0, text_len), strict=True):
        h, cache = extend(
            weights, cache, tokens_RxP[:, cut], positions_RxP[:, cut], valid_RxP[:, cut],
            start, cfg, modality,
        )  # fmt: skip
    return h, cache


def code_logits(weights: DecodeWeights, h_NxD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """fp32 logits `[N, num_codes]` of the first codes (weights cut by `prepare(num_codes=)`).

    Codes past the model's codebook (`cfg.codebook_size`) get `layers.MASK_VALUE`.
    """
    if weights.num_codes is None or weights.num_codes > vocab.NUM_IMAGE_CODES:
        raise ValueError("code_logits needs weights prepared with num_codes <= 8192")
    head = weights.trainable["vision_head"][:, : weights.num_codes]
    dtype = jnp.dtype(weights.compute_dtype)
    logits = jnp.dot(h_NxD.astype(dtype), head.astype(dtype), preferred_element_type=jnp.float32)
    if weights.num_codes > cfg.codebook_size:
        beyond = jnp.arange(weights.num_codes) >= cfg.codebook_size
        logits = jnp.where(beyond[None], layers.MASK_VALUE, logits)
    return logits


def all_logits(weights: DecodeWeights, h_NxD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """fp32 logits `[N, 160136]` over the joint vocabulary (weights with the whole head)."""
    if weights.num_codes is not None:
        raise ValueError("all_logits needs weights prepared with the whole vision head")
    cfg = cfg.replace(compute_dtype=weights.compute_dtype)
    return heads.logits_from_hidden(weights.frozen, weights.trainable, h_NxD[:, None], cfg)[:, 0]


def text_logits(weights: DecodeWeights, h_NxD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """fp32 logits `[N, 151936]` of the frozen text head."""
    cfg = cfg.replace(compute_dtype=weights.compute_dtype)
    return heads.text_logits(weights.frozen, h_NxD, cfg)


def head_code_logits(
    weights: DecodeWeights, h_NxD: jax.Array, num: int, cfg: ModelConfig
) -> jax.Array:
    """fp32 logits `[N, num, num_codes]` of next-K heads 1..num (one matmul for all)."""
    cfg = cfg.replace(compute_dtype=weights.compute_dtype)
    return heads.all_head_vision_logits(weights.trainable, h_NxD, num, cfg, weights.num_codes)
