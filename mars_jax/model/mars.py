"""SemVIE forward pass (paper §3.3, eq. 3–4): frozen Qwen + vision experts.

Two paths share one layer body:

- static layout (`layout` given): the sequence is cut into its `(modality, length)`
  segments, each a separate carry of the layer scan, processed only by its own expert.
  Attention is block-causal over segments: a segment's queries see the keys of all earlier
  segments and causally its own. In text-to-image the text stream then depends on frozen
  weights only, so JAX computes no backward pass for it.
- general (`layout=None`): one mixed segment; both experts run on every token and
  `where(is_vision, ...)` selects (generation of interleaved text and image).

`forward_hidden` returns the final-normed hidden states; `forward_logits` applies the
text head and the vision head and concatenates them (160,136 ids).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mars_jax.model import activation_sharding, attention, heads, layers
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import layout as layout_lib
from mars_jax.tokens import vocab

MIXED = "mixed"  # modality of the single segment of the general path

REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def segments_of(layout: layout_lib.Layout | None, seq_len: int) -> list[tuple[str, int, int]]:
    """`(modality, start, stop)` of each segment; one mixed segment when layout is None."""
    if layout is None:
        return [(MIXED, 0, seq_len)]
    if layout_lib.length(layout) != seq_len:
        n = layout_lib.length(layout)
        raise ValueError(f"layout {layout} has length {n}, but the tokens have {seq_len}")
    return layout_lib.bounds(layout)


def with_unfrozen(frozen: dict, trainable: dict) -> dict:
    """The LLM as the forward pass uses it: trained copies (`ModelConfig.unfreeze`) in place of
    their frozen groups. Without unfrozen groups, `frozen` itself."""
    unfrozen = trainable.get("unfrozen_layers")
    if not unfrozen:
        return frozen
    return {**frozen, "layers": {**frozen["layers"], **unfrozen}}


def embed(frozen: dict, trainable: dict, tokens_BxL: jax.Array, modality: str, dtype) -> jax.Array:
    """Embedding rows: text table for text ids, vision table for ids >= 151,936."""

    def text():
        ids = jnp.clip(tokens_BxL, 0, vocab.TEXT_VOCAB_SIZE - 1)
        return jnp.take(frozen["embed"], ids, axis=0).astype(dtype)

    def vision():
        ids = jnp.clip(tokens_BxL - vocab.TEXT_VOCAB_SIZE, 0, vocab.VISION_VOCAB_SIZE - 1)
        return jnp.take(trainable["vision_embed"], ids, axis=0).astype(dtype)

    if modality == layout_lib.TEXT:
        return text()
    if modality == layout_lib.VISION:
        return vision()
    return jnp.where(vocab.is_vision(tokens_BxL)[..., None], vision(), text())


def image_offsets(
    tokens_BxL: jax.Array,
    positions_BxL: jax.Array,
    valid_BxL: jax.Array,
    opener_before_B: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`(offsets, openers)`, both `[B, L]`: `openers` is the rotary position of the latest valid
    `<img>` / `<lo>` at or before each token (-1 where none), `offsets` each token's position
    minus it (-1 where none). With the data's positions an offset is a code's place in its
    image: 1 + its raster index after `<img>` (`formats.sr_image_positions` for stage III).
    `opener_before_B`: the latest opener's position before these tokens (a decoding cache's).
    """
    opener = jnp.where(vocab.is_image_opener(tokens_BxL) & valid_BxL, positions_BxL, -1)
    latest = jax.lax.cummax(opener, axis=1)
    if opener_before_B is not None:
        latest = jnp.maximum(latest, opener_before_B[:, None])
    return jnp.where(latest >= 0, positions_BxL - latest, -1), latest


def add_image_positions(
    x_BxSxD: jax.Array, trainable: dict, tokens_BxS, offsets_BxS, cfg: ModelConfig
) -> jax.Array:
    """`x` plus the learned row and column embeddings (`ModelConfig.image_pos_grid`) on the
    vision tokens after an `<img>` / `<lo>`; `x` unchanged when the option is off.

    Offset 1 + y·cols + x is code (y, x); the image's end token (offset 1 + rows·cols at
    most) takes row `rows`, column 0. The opener itself (offset 0) gets nothing.
    """
    rows, cols = cfg.image_pos_grid
    if not cols:
        return x_BxSxD
    table = trainable["image_pos_embed"]
    y, x = jnp.divmod(jnp.maximum(offsets_BxS - 1, 0), cols)
    pos = jnp.take(table["row"], jnp.minimum(y, rows), axis=0) + jnp.take(table["col"], x, axis=0)
    use = vocab.is_vision(tokens_BxS) & (offsets_BxS >= 1)
    return x_BxSxD + jnp.where(use[..., None], pos.astype(x_BxSxD.dtype), 0)


def expert(fn, modality: str, text_params: dict, vision_params: dict, is_vision_N: jax.Array):
    """Run the expert(s) of a segment: one of them, or both and select per token."""
    if modality == layout_lib.TEXT:
        return fn(text_params)
    if modality == layout_lib.VISION:
        return fn(vision_params)
    out_text, out_vision = fn(text_params), fn(vision_params)
    pick = lambda t, v: jnp.where(is_vision_N.reshape((-1,) + (1,) * (t.ndim - 1)), v, t)
    return jax.tree.map(pick, out_text, out_vision)


def segment_qkv(x_BxSxD, modality, frozen_layer, trainable_layer, cos_sin, is_vision_N, cfg):
    """Pre-norm + expert QKV of one segment: `[B, S, H, Dh]`, `[B, S, KV, Dh]` x2."""
    dtype = jnp.dtype(cfg.compute_dtype)
    b, s, d = x_BxSxD.shape
    x_ND = activation_sharding.tokens(x_BxSxD.reshape(b * s, d))
    h_ND = layers.rms_norm(x_ND, frozen_layer["ln1"], cfg.norm_eps)
    cos, sin = cos_sin
    q, k, v = expert(
        lambda p: layers.qkv_projection(h_ND, p, cos, sin, dtype),
        modality,
        frozen_layer["text_attn"],
        trainable_layer["vision_attn"],
        is_vision_N,
    )
    unflat = lambda t: activation_sharding.tokens(t.reshape(b, s, *t.shape[1:]))
    return unflat(activation_sharding.tokens(q)), unflat(k), unflat(v)


def segment_finish(
    x_BxSxD, attn_BxSxHxDh, modality, frozen_layer, trainable_layer, is_vision_N, cfg
):
    """Shared O-projection and residual, then pre-norm + expert FFN and residual."""
    dtype = jnp.dtype(cfg.compute_dtype)
    b, s, d = x_BxSxD.shape
    x_ND = activation_sharding.tokens(x_BxSxD.reshape(b * s, d))
    a_ND = layers.out_projection(
        attn_BxSxHxDh.reshape(b * s, *attn_BxSxHxDh.shape[2:]), frozen_layer["o"], dtype
    )
    x_ND = activation_sharding.tokens(x_ND + a_ND.astype(x_ND.dtype))
    h_ND = layers.rms_norm(x_ND, frozen_layer["ln2"], cfg.norm_eps)
    f_ND = expert(
        lambda p: layers.swiglu(h_ND, p, dtype),
        modality,
        frozen_layer["text_mlp"],
        trainable_layer["vision_mlp"],
        is_vision_N,
    )
    out_ND = activation_sharding.tokens(x_ND + f_ND.astype(x_ND.dtype))
    return activation_sharding.tokens(out_ND.reshape(b, s, d))


def _maybe_remat(fn, cfg: ModelConfig):
    if cfg.remat_policy == "none":
        return fn
    return jax.checkpoint(fn, policy=REMAT[cfg.remat_policy], prevent_cse=False)


def forward_segments(
    frozen: dict,
    trainable: dict,
    tokens_BxL: jax.Array,
    positions_BxL: jax.Array,
    valid_BxL: jax.Array,
    layout: layout_lib.Layout | None,
    cfg: ModelConfig,
    return_kv: bool = False,
):
    """Final-normed hidden states `[B, S_i, D]` of each segment of `layout`.

    With `return_kv`, also the rotated keys and the values of every layer,
    `([Ly, B, L, KV, Dh], [Ly, B, L, KV, Dh])` (to fill a decoding cache).
    """
    dtype = jnp.dtype(cfg.compute_dtype)
    frozen = with_unfrozen(frozen, trainable)
    tokens_BxL = jnp.asarray(tokens_BxL, jnp.int32)
    valid_BxL = jnp.asarray(valid_BxL, bool)
    segs = segments_of(layout, tokens_BxL.shape[1])
    consts = []
    for _, start, stop in segs:
        pos_N = positions_BxL[:, start:stop].reshape(-1)
        consts.append(
            (
                layers.rotary_cos_sin(pos_N, cfg.head_dim, cfg.rope_base),
                vocab.is_vision(tokens_BxL[:, start:stop].reshape(-1)),
            )
        )
    xs0 = tuple(
        embed(frozen, trainable, tokens_BxL[:, start:stop], modality, dtype)
        for modality, start, stop in segs
    )
    if cfg.image_pos_grid[1]:
        offsets_BxL, _ = image_offsets(tokens_BxL, jnp.asarray(positions_BxL), valid_BxL)
        xs0 = tuple(
            add_image_positions(x, trainable, tokens_BxL[:, a:b], offsets_BxL[:, a:b], cfg)
            for x, (_, a, b) in zip(xs0, segs, strict=True)
        )

    def layer(xs, layer_params):
        frozen_layer, trainable_layer = layer_params
        qkv = [
            segment_qkv(x, m, frozen_layer, trainable_layer, cs, isv, cfg)
            for x, (m, _, _), (cs, isv) in zip(xs, segs, consts, strict=True)
        ]
        out = []
        for i, (x, (m, _, _), (_, isv)) in enumerate(zip(xs, segs, consts, strict=True)):
            kv_blocks = [(k, v) for _, k, v in qkv[: i + 1]]
            key_valid = [valid_BxL[:, start:stop] for _, start, stop in segs[: i + 1]]
            a = attention.attend(qkv[i][0], kv_blocks, key_valid, cfg.attention, cfg.compute_dtype)
            out.append(segment_finish(x, a, m, frozen_layer, trainable_layer, isv, cfg))
        kv = None
        if return_kv:
            kv = tuple(jnp.concatenate([t[j] for t in qkv], axis=1) for j in (1, 2))
        return tuple(out), kv

    layer = _maybe_remat(layer, cfg)
    unroll = min(cfg.scan_unroll, cfg.num_layers)
    xs, kv = jax.lax.scan(layer, xs0, (frozen["layers"], trainable["layers"]), unroll=unroll)
    hidden = [layers.rms_norm(x, frozen["final_norm"], cfg.norm_eps) for x in xs]
    return (hidden, kv) if return_kv else hidden


def forward_hidden(
    frozen: dict,
    trainable: dict,
    tokens_BxL: jax.Array,
    positions_BxL: jax.Array,
    valid_BxL: jax.Array,
    layout: layout_lib.Layout | None,
    cfg: ModelConfig,
) -> jax.Array:
    """Final-normed hidden states `[B, L, D]` (the input of both heads)."""
    segs = forward_segments(frozen, trainable, tokens_BxL, positions_BxL, valid_BxL, layout, cfg)
    return jnp.concatenate(segs, axis=1)


def forward_logits(
    frozen: dict,
    trainable: dict,
    tokens_BxL: jax.Array,
    positions_BxL: jax.Array,
    valid_BxL: jax.Array,
    layout: layout_lib.Layout | None,
    cfg: ModelConfig,
) -> jax.Array:
    """Logits `[B, L, 160136]` fp32 over the joint vocabulary (for sampling and tests).

    With `cfg.image_logits == "vision_only"` and a static layout, positions whose next token
    lies in a vision segment (`layout.target_layout`; the last position keeps its own
    segment's modality) get -inf on the text range, as in the loss. Training uses
    `loss.task_loss`, which never builds this array.
    """
    h_BxLxD = forward_hidden(frozen, trainable, tokens_BxL, positions_BxL, valid_BxL, layout, cfg)
    if cfg.image_logits != "vision_only" or layout is None:
        return heads.logits_from_hidden(frozen, trainable, h_BxLxD, cfg)
    out = [
        heads.logits_from_hidden(
            frozen, trainable, h_BxLxD[:, start:stop], cfg, m == layout_lib.VISION
        )
        for m, start, stop in layout_lib.bounds(layout_lib.target_layout(layout))
    ]
    return jnp.concatenate(out, axis=1)
