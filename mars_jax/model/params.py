"""The parameter tree: `{"frozen": LLM as loaded, "trainable": vision parts}`.

Plain nested dicts; every per-layer leaf has a leading `[num_layers]` axis so the decoder is
one `lax.scan`. `logical_axes` names every axis for sharding rules; `abstract_params` gives
shapes and dtypes without allocating (for checkpoint restore and sharding plans).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mars_jax.model import heads
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import vocab

INIT_STD = 0.02
# Relative noise on the vision head (see `init_trainable_from_frozen`).
VISION_HEAD_NOISE = 0.02


def _attn_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, h, kv, dh = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    return {
        "q": (d, h, dh),
        "k": (d, kv, dh),
        "v": (d, kv, dh),
        "q_bias": (h, dh),
        "k_bias": (kv, dh),
        "v_bias": (kv, dh),
    }


def _mlp_shapes(cfg: ModelConfig, f: int | None = None) -> dict[str, tuple[int, ...]]:
    """SwiGLU weights of hidden size `f` (default: the text expert's `mlp_dim`)."""
    d, f = cfg.width, f or cfg.mlp_dim
    return {"gate": (d, f), "up": (d, f), "down": (f, d)}


ATTN_AXES = {
    "q": ("embed", "heads", "head_dim"),
    "k": ("embed", "kv", "head_dim"),
    "v": ("embed", "kv", "head_dim"),
    "q_bias": ("heads", "head_dim"),
    "k_bias": ("kv", "head_dim"),
    "v_bias": ("kv", "head_dim"),
}
MLP_AXES = {"gate": ("embed", "mlp"), "up": ("embed", "mlp"), "down": ("mlp", "embed")}


def frozen_shapes(cfg: ModelConfig) -> dict:
    ly, d = cfg.num_layers, cfg.width
    stack = lambda shapes: {k: (ly, *s) for k, s in shapes.items()}
    return {
        "embed": (vocab.TEXT_VOCAB_SIZE, d),
        "layers": {
            "ln1": (ly, d),
            "ln2": (ly, d),
            "text_attn": stack(_attn_shapes(cfg)),
            "o": (ly, cfg.num_heads, cfg.head_dim, d),
            "text_mlp": stack(_mlp_shapes(cfg)),
        },
        "final_norm": (d,),
        "text_head": (d, vocab.TEXT_VOCAB_SIZE),
    }


def trainable_shapes(cfg: ModelConfig) -> dict:
    ly, d = cfg.num_layers, cfg.width
    stack = lambda shapes: {k: (ly, *s) for k, s in shapes.items()}
    return {
        "vision_embed": (vocab.VISION_VOCAB_SIZE, d),
        "layers": {
            "vision_attn": stack(_attn_shapes(cfg)),
            "vision_mlp": stack(_mlp_shapes(cfg, cfg.vision_ffn_dim)),
        },
        "vision_head": (d, vocab.VISION_VOCAB_SIZE),
        **heads.head_shapes(cfg),  # stage III next-K heads (none when nktp_k = 1)
        **_unfrozen(cfg, frozen_shapes(cfg)["layers"]),
        **_image_pos(cfg),
    }


def _image_pos(cfg: ModelConfig, row=None, col=None) -> dict:
    """`{"image_pos_embed": {"row", "col"}}` when `cfg.image_pos_grid` is on (default: shapes).

    `rows + 1` row embeddings (the last for the image's end token) and `cols` columns.
    """
    rows, cols = cfg.image_pos_grid
    if not cols:
        return {}
    row = (rows + 1, cfg.width) if row is None else row
    col = (cols, cfg.width) if col is None else col
    return {"image_pos_embed": {"row": row, "col": col}}


def _unfrozen(cfg: ModelConfig, frozen_layers: dict) -> dict:
    """`{"unfrozen_layers": {...}}` with the `cfg.unfreeze` groups of a frozen layer tree."""
    if not cfg.unfreeze:
        return {}
    return {"unfrozen_layers": {name: frozen_layers[name] for name in cfg.unfreeze}}


def logical_axes(cfg: ModelConfig) -> dict:
    """The parameter tree with a tuple of logical axis names in place of every leaf."""
    layer = lambda axes: {k: ("layers", *a) for k, a in axes.items()}
    frozen_layer_axes = {
        "ln1": ("layers", "embed"),
        "ln2": ("layers", "embed"),
        "text_attn": layer(ATTN_AXES),
        "o": ("layers", "heads", "head_dim", "embed"),
        "text_mlp": layer(MLP_AXES),
    }
    return {
        "frozen": {
            "embed": ("vocab", "embed"),
            "layers": frozen_layer_axes,
            "final_norm": ("embed",),
            "text_head": ("embed", "vocab"),
        },
        "trainable": {
            "vision_embed": ("vocab", "embed"),
            "layers": {"vision_attn": layer(ATTN_AXES), "vision_mlp": layer(MLP_AXES)},
            "vision_head": ("embed", "vocab"),
            **heads.logical_axes(cfg),
            **_unfrozen(cfg, frozen_layer_axes),
            **_image_pos(cfg, (None, "embed"), (None, "embed")),
        },
    }


def is_axes_leaf(x) -> bool:
    """Leaf predicate for `jax.tree.map` over a `logical_axes` tree."""
    return isinstance(x, tuple)


def abstract_params(cfg: ModelConfig) -> dict:
    """`jax.ShapeDtypeStruct` tree of `init_params(cfg, rng)`, without allocating."""
    to_struct = lambda dtype: lambda s: jax.ShapeDtypeStruct(s, jnp.dtype(dtype))
    is_shape = lambda x: isinstance(x, tuple)
    return {
        "frozen": jax.tree.map(to_struct(cfg.frozen_dtype), frozen_shapes(cfg), is_leaf=is_shape),
        "trainable": jax.tree.map(
            to_struct(cfg.trainable_dtype), trainable_shapes(cfg), is_leaf=is_shape
        ),
    }


def init_frozen(cfg: ModelConfig, rng: jax.Array) -> dict:
    """A random stand-in for a pretrained LLM (tests, demo): normal(0.02), unit norms.

    One normal draw is cut into all leaves (one random-bits kernel to compile, not one per
    leaf shape).
    """
    is_shape = lambda x: isinstance(x, tuple)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(frozen_shapes(cfg), is_leaf=is_shape)
    sizes = [math.prod(shape) for _, shape in with_paths]
    flat = INIT_STD * jax.random.normal(rng, (sum(sizes),), jnp.float32)
    dtype = jnp.dtype(cfg.frozen_dtype)
    out, start = [], 0
    for (path, shape), size in zip(with_paths, sizes, strict=True):
        name = jax.tree_util.keystr(path)
        if "ln" in name or "final_norm" in name:
            out.append(jnp.ones(shape, dtype))
        else:
            out.append(flat[start : start + size].reshape(shape).astype(dtype))
        start += size
    frozen = jax.tree.unflatten(treedef, out)
    frozen["text_head"] = heads.tie_text_head(frozen["text_head"], cfg)
    return frozen


def init_trainable_from_frozen(
    cfg: ModelConfig, frozen: dict, rng: jax.Array, *, num_text_rows: int | None = None
) -> dict:
    """Vision parameters initialised from the text ones (paper §3.3).

    - vision embedding rows: the mean of the real text embedding rows (the first
      `num_text_rows`, default all), so new tokens start at the centre of the text cloud;
    - vision experts (QKV with bias, FFN): exact copies of the text experts, or normal(0.02)
      draws with `cfg.vision_expert_init == "random"` (the query projection zero with
      `cfg.vision_query_init == "zero"`);
    - vision head: the mean of the real text-head columns plus a small relative noise.
      Every vision logit then starts at the LLM's mean text logit at that position: on the
      same scale as the text logits (a zero head would put all 8,200 vision ids at logit 0,
      far above or below the text range depending on the checkpoint), so the initial loss
      and gradients are moderate, and the noise breaks the symmetry between codes.
    """
    n = vocab.TEXT_VOCAB_SIZE if num_text_rows is None else num_text_rows
    dtype = jnp.dtype(cfg.trainable_dtype)
    embed = jnp.asarray(frozen["embed"][:n], jnp.float32)
    head = jnp.asarray(frozen["text_head"][:, :n], jnp.float32)
    copy = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)
    vision_attn = copy(frozen["layers"]["text_attn"])
    if cfg.vision_ffn_dim == cfg.mlp_dim:
        vision_mlp = copy(frozen["layers"]["text_mlp"])
    else:  # `vision_mlp_dim`: its own shape, drawn below (the config requires "random")
        shapes = trainable_shapes(cfg)["layers"]["vision_mlp"]
        vision_mlp = {k: jax.ShapeDtypeStruct(v, dtype) for k, v in shapes.items()}
    if cfg.vision_expert_init == "random":
        vision_attn, vision_mlp = _redraw((vision_attn, vision_mlp), jax.random.fold_in(rng, 3))
    if cfg.vision_query_init == "zero":
        vision_attn = {
            **vision_attn,
            "q": jnp.zeros_like(vision_attn["q"]),
            "q_bias": jnp.zeros_like(vision_attn["q_bias"]),
        }
    trainable = {
        "vision_embed": vision_embed_init(jnp.mean(embed, axis=0), cfg),
        "layers": {
            "vision_attn": vision_attn,
            "vision_mlp": vision_mlp,
        },
        "vision_head": vision_head_init(jnp.mean(head, axis=1), jnp.std(head), rng, cfg),
    }
    trainable.update(copy(_unfrozen(cfg, frozen["layers"])))  # `cfg.unfreeze`: exact copies
    trainable.update(image_pos_init(cfg, jax.random.fold_in(rng, 2)))
    return heads.extend_trainable(cfg, trainable, jax.random.fold_in(rng, 1))


def _normal(rng: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """A fresh parameter: normal(INIT_STD), drawn in float32, stored in `dtype`."""
    return (INIT_STD * jax.random.normal(rng, shape, jnp.float32)).astype(dtype)


def _redraw(tree, rng: jax.Array):
    """Every leaf of `tree` drawn afresh with `_normal`, same shapes and dtypes."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(rng, len(leaves))
    fresh = [_normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, fresh)


def image_pos_init(cfg: ModelConfig, rng: jax.Array) -> dict:
    """`{"image_pos_embed": {"row", "col"}}`, normal(0.02), or `{}` when the option is off."""
    shapes = _image_pos(cfg)
    if not shapes:
        return {}
    table = shapes["image_pos_embed"]
    row_key, col_key = jax.random.split(rng)
    dtype = cfg.trainable_dtype
    return _image_pos(
        cfg, _normal(row_key, table["row"], dtype), _normal(col_key, table["col"], dtype)
    )


def vision_embed_init(text_embed_mean_D: jax.Array, cfg: ModelConfig) -> jax.Array:
    """`[VISION_VOCAB, D]`: every row the mean text embedding."""
    mean = jnp.asarray(text_embed_mean_D, jnp.float32)
    return jnp.broadcast_to(mean, (vocab.VISION_VOCAB_SIZE, cfg.width)).astype(cfg.trainable_dtype)


def vision_head_init(
    text_head_mean_D: jax.Array, text_head_std: jax.Array, rng: jax.Array, cfg: ModelConfig
) -> jax.Array:
    """`[D, VISION_VOCAB]`: the mean text-head column plus `VISION_HEAD_NOISE` x its std."""
    noise = jax.random.normal(rng, (cfg.width, vocab.VISION_VOCAB_SIZE), jnp.float32)
    head = jnp.asarray(text_head_mean_D, jnp.float32)[:, None]
    return (head + VISION_HEAD_NOISE * text_head_std * noise).astype(cfg.trainable_dtype)


def init_params(cfg: ModelConfig, rng: jax.Array) -> dict:
    """Random frozen LLM plus trainable vision parts initialised from it."""
    k_frozen, k_train = jax.random.split(rng)
    frozen = init_frozen(cfg, k_frozen)
    return {"frozen": frozen, "trainable": init_trainable_from_frozen(cfg, frozen, k_train)}
