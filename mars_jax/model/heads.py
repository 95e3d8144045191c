"""Output heads: the frozen text head, the trainable vision head and the next-K heads.

Logits at every position are `concat(text_head(h), vision_head(h))` over the joint
160,136-id vocabulary (paper §3.3); the vision head computes only the codebook's codes
(`ModelConfig.codebook_size`) and the specials.

Next-K token prediction (paper §3.1, eq. 2; docs/NKTP.md): head 1 is the vision head
itself (plain next-token prediction). Head k = 2..K predicts the token k steps ahead
through a small residual SwiGLU adapter on the final hidden state followed by the *shared*
vision head:

    h_k = h + down_k(silu(gate_k(h)) * up_k(h))        logits_k = vision_head(h_k)

`down_k` starts at zero, so every head starts as a copy of head 1. The adapters live in
`trainable["nktp_heads"]` (`[K-1, D, D]` per matrix); with K = 1 nothing is added.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import layers
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import vocab

HEADS = "nktp_heads"
ADAPTER_KEYS = ("gate", "up", "down")
INIT_STD = 0.02


# ------------------------------------------------------------------------------ parameters


def num_heads(cfg: ModelConfig) -> int:
    """K: tokens predicted per position (head 1 is the vision head itself)."""
    return int(cfg.nktp_k)


def head_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Adapter shapes of heads 2..K; empty when K = 1."""
    extra, d = num_heads(cfg) - 1, cfg.width
    if extra == 0:
        return {}
    return {HEADS: {"gate": (extra, d, d), "up": (extra, d, d), "down": (extra, d, d)}}


def logical_axes(cfg: ModelConfig) -> dict:
    """Logical axes of the added subtree (merge into `params.logical_axes(cfg)["trainable"]`)."""
    if num_heads(cfg) == 1:
        return {}
    return {
        HEADS: {
            "gate": (None, "embed", "mlp"),
            "up": (None, "embed", "mlp"),
            "down": (None, "mlp", "embed"),
        }
    }


def init_heads(cfg: ModelConfig, rng: jax.Array) -> dict:
    """Fresh adapters: normal(0.02) gate/up, zero down (each head starts equal to head 1)."""
    shapes = head_shapes(cfg)
    if not shapes:
        return {}
    dtype = jnp.dtype(cfg.trainable_dtype)
    k_gate, k_up = jax.random.split(rng)
    s = shapes[HEADS]
    return {
        HEADS: {
            "gate": (INIT_STD * jax.random.normal(k_gate, s["gate"])).astype(dtype),
            "up": (INIT_STD * jax.random.normal(k_up, s["up"])).astype(dtype),
            "down": jnp.zeros(s["down"], dtype),
        }
    }


def extend_trainable(cfg: ModelConfig, trainable: dict, rng: jax.Array) -> dict:
    """`trainable` plus fresh next-K heads; an existing `nktp_heads` subtree is kept."""
    if num_heads(cfg) == 1 or HEADS in trainable:
        return trainable
    return {**trainable, **init_heads(cfg, rng)}


def check_heads(cfg: ModelConfig, trainable: Mapping) -> None:
    """Raise naming the key if `trainable` lacks the heads `cfg.nktp_k` asks for."""
    want = head_shapes(cfg)
    if not want:
        return
    if HEADS not in trainable:
        raise KeyError(
            f"model.nktp_k={cfg.nktp_k} needs trainable[{HEADS!r}]; "
            "add them with heads.extend_trainable"
        )
    for key, shape in want[HEADS].items():
        got = tuple(trainable[HEADS][key].shape)
        if got != shape:
            raise ValueError(f"trainable[{HEADS!r}][{key!r}] has shape {got}, expected {shape}")


# ------------------------------------------------------------------------------ logits


def text_logits(frozen: dict, h_NxD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """fp32 logits of the frozen text head, `[N, 151936]`."""
    dtype = jnp.dtype(cfg.compute_dtype)
    return jnp.dot(
        h_NxD.astype(dtype), frozen["text_head"].astype(dtype), preferred_element_type=jnp.float32
    )


def shared_column_id(distinct_ids) -> int:
    """The first text id outside `distinct_ids`: in a tied head (the demo LLM's), its column
    is the one every id outside them shares."""
    ids = {int(i) for i in distinct_ids}
    return next(i for i in range(vocab.TEXT_VOCAB_SIZE) if i not in ids)


def tied_text_id(cfg: ModelConfig) -> int:
    """`shared_column_id` of `cfg.text_head_ids`."""
    return shared_column_id(cfg.text_head_ids)


def text_lse_and_target(
    frozen: dict, h_NxD: jax.Array, text_ids_N: jax.Array, cfg: ModelConfig
) -> tuple[jax.Array, jax.Array]:
    """`(logsumexp of the 151,936 text logits, the logit of text_ids)`, each `[N]` fp32.

    With `cfg.text_head_ids` the head's other columns are one shared column, so the
    log-partition is `lse(logits of the distinct columns, shared logit + log(#tied ids))`:
    the same value from `len(ids) + 1` columns instead of 151,936.
    """
    if not cfg.text_head_ids:
        logits = text_logits(frozen, h_NxD, cfg)
        target = jnp.take_along_axis(logits, text_ids_N[:, None], axis=1)[:, 0]
        return jax.nn.logsumexp(logits, axis=-1), target
    ids = jnp.asarray(cfg.text_head_ids, jnp.int32)
    n = len(cfg.text_head_ids)
    columns = np.append(cfg.text_head_ids, tied_text_id(cfg))
    dtype = jnp.dtype(cfg.compute_dtype)
    head = frozen["text_head"][:, columns].astype(dtype)
    logits = jnp.dot(h_NxD.astype(dtype), head, preferred_element_type=jnp.float32)
    tied_count = np.zeros(n + 1, np.float32)
    tied_count[n] = np.log(vocab.TEXT_VOCAB_SIZE - n)
    lse = jax.nn.logsumexp(logits + tied_count, axis=-1)
    at = jnp.clip(jnp.searchsorted(ids, text_ids_N), 0, n - 1)
    column = jnp.where(ids[at] == text_ids_N, at, n)
    return lse, jnp.take_along_axis(logits, column[:, None], axis=1)[:, 0]


def tie_text_head(head_DxV: jax.Array, cfg: ModelConfig) -> jax.Array:
    """`head` with every column outside `cfg.text_head_ids` set to the shared one."""
    if not cfg.text_head_ids:
        return head_DxV
    ids = np.asarray(cfg.text_head_ids)
    tied = jnp.broadcast_to(head_DxV[:, tied_text_id(cfg)][:, None], head_DxV.shape)
    return tied.at[:, ids].set(head_DxV[:, ids])


def untied_text_id(head_DxV: jax.Array, cfg: ModelConfig) -> int | None:
    """The first id outside `cfg.text_head_ids` whose column is not the shared one (None:
    the head is tied as `cfg` says)."""
    if not cfg.text_head_ids:
        return None
    free = np.zeros(vocab.TEXT_VOCAB_SIZE, bool)
    free[np.asarray(cfg.text_head_ids)] = True
    shared = head_DxV[:, tied_text_id(cfg)][:, None]
    differs = jnp.any(head_DxV != shared, axis=0) & ~jnp.asarray(free)
    first = int(jnp.argmax(differs))
    return first if bool(differs[first]) else None


def compact_vision_logits(trainable: dict, h_NxD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """fp32 logits of the first `cfg.codebook_size` codes, then the specials: `[N, n + 8]`
    (`compact_vision_ids` maps vision ids to its columns)."""
    dtype = jnp.dtype(cfg.compute_dtype)
    n, codes = cfg.codebook_size, vocab.NUM_IMAGE_CODES
    head = trainable["vision_head"]
    if n < codes:
        head = jnp.concatenate([head[:, :n], head[:, codes:]], axis=1)
    return jnp.dot(h_NxD.astype(dtype), head.astype(dtype), preferred_element_type=jnp.float32)


def compact_vision_ids(vision_ids_N: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """`(columns, in_codebook)`: each vision id's column in `compact_vision_logits`, and
    whether it has one (codes past `cfg.codebook_size` do not)."""
    n, codes = cfg.codebook_size, vocab.NUM_IMAGE_CODES
    is_special = vision_ids_N >= codes
    columns = jnp.where(is_special, vision_ids_N - codes + n, jnp.minimum(vision_ids_N, n - 1))
    return columns, is_special | (vision_ids_N < n)


def vision_logits(trainable: dict, h_NxD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """fp32 logits of the trainable vision head, `[N, 8200]`.

    Only the first `cfg.codebook_size` codes and the specials are computed; the codes a
    smaller VQ does not have get `layers.MASK_VALUE` (zero probability, no gradient).
    """
    n, codes = cfg.codebook_size, vocab.NUM_IMAGE_CODES
    logits = compact_vision_logits(trainable, h_NxD, cfg)
    if n < codes:
        unused = jnp.full((logits.shape[0], codes - n), layers.MASK_VALUE, jnp.float32)
        logits = jnp.concatenate([logits[:, :n], unused, logits[:, n:]], axis=1)
    return logits


def logits_from_hidden(
    frozen: dict, trainable: dict, h_BxSxD: jax.Array, cfg: ModelConfig, vision_only: bool = False
) -> jax.Array:
    """`concat(text_head(h), vision_head(h))`, `[B, S, 160136]` fp32.

    With `vision_only` the text range is -inf and the text head is not computed.
    """
    b, s, d = h_BxSxD.shape
    h = h_BxSxD.reshape(b * s, d)
    lv = vision_logits(trainable, h, cfg)
    if vision_only:
        lt = jnp.full((b * s, vocab.TEXT_VOCAB_SIZE), -jnp.inf, jnp.float32)
    else:
        lt = text_logits(frozen, h, cfg)
    return jnp.concatenate([lt, lv], axis=-1).reshape(b, s, vocab.VOCAB_SIZE)


# ------------------------------------------------------------------------------ next-K heads


def head_hidden(trainable: dict, h_NxD: jax.Array, k: int, cfg: ModelConfig) -> jax.Array:
    """Input of the shared vision head for head `k` (1-based); head 1 is `h` itself."""
    if k == 1:
        return h_NxD
    dtype = jnp.dtype(cfg.compute_dtype)
    adapter = {name: trainable[HEADS][name][k - 2] for name in ADAPTER_KEYS}
    delta = layers.swiglu(h_NxD, adapter, dtype)
    return (h_NxD.astype(jnp.float32) + delta.astype(jnp.float32)).astype(h_NxD.dtype)


def fuse_heads(heads: Mapping, num: int) -> dict:
    """Adapters of heads 2..num laid out for `all_head_hidden`: `{"gate_up": [D, 2, num - 1,
    D], "down": [num - 1, D, D]}`. A decoder makes this once per call, so that each pass
    runs one matmul for the gates and ups of all heads, not two per head."""
    if "gate_up" in heads:  # fused already
        return dict(heads)
    gate_up = jnp.stack([heads["gate"][: num - 1], heads["up"][: num - 1]])  # [2, n, D, D]
    return {"gate_up": gate_up.transpose(2, 0, 1, 3), "down": heads["down"][: num - 1]}


def all_head_hidden(trainable: dict, h_NxD: jax.Array, num: int, cfg: ModelConfig) -> jax.Array:
    """Inputs of the shared vision head for heads 1..num: `[N, num, D]` (`head_hidden` for
    each k, computed together). Takes the trainable tree's adapters or `fuse_heads`'s."""
    if num == 1:
        return h_NxD[:, None]
    dtype = jnp.dtype(cfg.compute_dtype)
    heads = fuse_heads(trainable[HEADS], num)
    n, d = h_NxD.shape
    gate_up = heads["gate_up"][:, :, : num - 1]
    both = jnp.dot(h_NxD.astype(dtype), gate_up.reshape(d, -1).astype(dtype))
    gate, up = both.reshape(n, 2, num - 1, -1).transpose(1, 0, 2, 3)
    mid = (jax.nn.silu(gate) * up).astype(dtype)
    delta = jnp.einsum("nke,ked->nkd", mid, heads["down"][: num - 1].astype(dtype))
    out = (h_NxD.astype(jnp.float32)[:, None] + delta.astype(jnp.float32)).astype(h_NxD.dtype)
    return jnp.concatenate([h_NxD[:, None], out], axis=1)


def all_head_vision_logits(
    trainable: dict, h_NxD: jax.Array, num: int, cfg: ModelConfig, num_ids: int | None = None
) -> jax.Array:
    """fp32 vision-head logits of heads 1..num: `[N, num, num_ids]` (default all 8,200).

    `num_ids` keeps only the first vision ids (a sampler's codebook) and skips the rest of
    the head's matmul. One matmul for all heads: the head is shared.
    """
    dtype = jnp.dtype(cfg.compute_dtype)
    head = trainable["vision_head"][:, : num_ids or vocab.VISION_VOCAB_SIZE].astype(dtype)
    hidden = all_head_hidden(trainable, h_NxD, num, cfg).astype(dtype)
    return jnp.einsum("nkd,dc->nkc", hidden, head, preferred_element_type=jnp.float32)
