"""Next-K token prediction (paper §3.1, eq. 2) for stage III: heads, code order, loss.

Design (docs/NKTP.md): the trunk is shared; head 1 is the model's own vision head (plain
next-token prediction). Head k = 2..K predicts the token k steps ahead through a small
residual SwiGLU adapter on the final hidden state followed by the *shared* vision head:

    h_k = h + down_k(silu(gate_k(h)) * up_k(h))        logits_k = vision_head(h_k)

`down_k` starts at zero, so every head starts as a copy of head 1. The adapters live in
`trainable["nktp_heads"]` (`[K-1, D, D]` per matrix); with K = 1 nothing is added and every
function here reduces to next-token prediction.

The K codes sampled together should depend on each other weakly (PAR, 2024): the high-res
codes are written in *region-interleaved* order. The grid is cut into K equal regions
(`region_grid`), and the sequence takes the first code of every region, then the second of
every region, and so on, so the K codes of one step lie in K different regions of the image.
`hires_order` gives the permutation and `to_sequence_order` / `to_raster` apply it.

Loss masks: head k at position t is trained on `tokens[t + k]` only where the K-step window
`t + 1 … t + k` lies wholly in the loss region (high-res codes and `<end>`) of one image;
that is the product of the data's next-token `loss_mask` over `t … t + k - 1`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax import vocab
from mars_jax.model import layers, loss, mars
from mars_jax.model import layout as layout_lib
from mars_jax.model.config import ModelConfig

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


def abstract_heads(cfg: ModelConfig) -> dict:
    """`jax.ShapeDtypeStruct`s of the added subtree (merge into abstract `trainable`)."""
    dtype = jnp.dtype(cfg.trainable_dtype)
    is_shape = lambda x: isinstance(x, tuple)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, dtype), head_shapes(cfg), is_leaf=is_shape
    )


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
            "add them with nktp.extend_trainable"
        )
    for key, shape in want[HEADS].items():
        got = tuple(trainable[HEADS][key].shape)
        if got != shape:
            raise ValueError(f"trainable[{HEADS!r}][{key!r}] has shape {got}, expected {shape}")


# ------------------------------------------------------------------------------ heads


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


# ------------------------------------------------------------------------------ code order


def region_grid(hi_grid_hw: tuple[int, int], k: int) -> tuple[int, int]:
    """`(rows, cols)` of regions, rows * cols = k: the cut whose regions are largest in
    their shorter side (so the k codes of one step are far apart), then the squarest.

    Each region must be a whole block of codes: rows divides h and cols divides w.
    """
    h, w = (int(x) for x in hi_grid_hw)
    fits = [(r, k // r) for r in range(1, k + 1) if k % r == 0 and h % r == 0 and w % (k // r) == 0]
    if not fits:
        raise ValueError(
            f"model.nktp_k={k}: the high-res grid {h}x{w} cannot be cut into {k} equal "
            "rectangular regions (choose K whose factors divide the grid sides)"
        )

    def badness(rc):
        rh, rw = h // rc[0], w // rc[1]
        return (-min(rh, rw), abs(math.log(rh / rw)), rc[0])

    return min(fits, key=badness)


def hires_order(hi_grid_hw: tuple[int, int], k: int) -> np.ndarray:
    """`order[i]` = raster index of the i-th high-res code in the sequence; identity if k = 1.

    Region-interleaved: step s (codes `s*k … s*k + k - 1`) holds the s-th code (raster order
    inside the region) of each of the k regions, regions in raster order.
    """
    h, w = (int(x) for x in hi_grid_hw)
    rows, cols = region_grid((h, w), k)
    rh, rw = h // rows, w // cols
    raster = np.arange(h * w).reshape(rows, rh, cols, rw)  # [region row, y, region col, x]
    by_region = raster.transpose(0, 2, 1, 3).reshape(k, rh * rw)  # [region, code in region]
    return np.ascontiguousarray(by_region.T.reshape(-1))


def inverse_order(order: np.ndarray) -> np.ndarray:
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    return inv


def to_sequence_order(codes_hxw: np.ndarray, k: int) -> np.ndarray:
    """Raster codes `[..., h, w]` → the same codes in sequence order, still shaped `[..., h, w]`.

    The data hook: pass the result to `formats.sr_row` / `formats.sr_batch` in place of the
    raster codes (they flatten in memory order, so the grid shape and layout are unchanged).
    """
    codes = np.asarray(codes_hxw)
    h, w = codes.shape[-2:]
    flat = codes.reshape(*codes.shape[:-2], h * w)
    return flat[..., hires_order((h, w), k)].reshape(codes.shape)


def to_raster(codes_seq: np.ndarray, hi_grid_hw: tuple[int, int], k: int) -> np.ndarray:
    """Codes in sequence order `[..., h*w]` (or `[..., h, w]`) → raster grid `[..., h, w]`."""
    h, w = (int(x) for x in hi_grid_hw)
    codes = np.asarray(codes_seq)
    flat = codes.reshape(*codes.shape[: codes.ndim - (2 if codes.shape[-2:] == (h, w) else 1)], -1)
    if flat.shape[-1] != h * w:
        raise ValueError(f"to_raster: {flat.shape[-1]} codes do not fill the grid {h}x{w}")
    return flat[..., inverse_order(hires_order((h, w), k))].reshape(*flat.shape[:-1], h, w)


# ------------------------------------------------------------------------------ loss


def window_weights(loss_mask_BxL: jax.Array, k: int) -> jax.Array:
    """Weights of head k: `prod(loss_mask[t : t + k])` (0 where the window leaves the row)."""
    w = jnp.asarray(loss_mask_BxL, jnp.float32)
    out = w
    length = w.shape[1]
    for j in range(1, k):
        shifted = jnp.pad(w[:, j:], ((0, 0), (0, min(j, length))))
        out = out * shifted
    return out


def window_targets(targets_BxL: jax.Array, k: int) -> jax.Array:
    """Targets of head k: `targets[t + k - 1]` = `tokens[t + k]` (PAD past the row's end)."""
    t = jnp.asarray(targets_BxL, jnp.int32)
    if k == 1:
        return t
    length = t.shape[1]
    shift = min(k - 1, length)
    return jnp.pad(t[:, shift:], ((0, 0), (0, shift)), constant_values=vocab.PAD)


def sr_loss(
    frozen: dict,
    trainable: dict,
    task_batch: Mapping,
    layout: layout_lib.Layout | None,
    cfg: ModelConfig,
    k: int | None = None,
) -> tuple[jax.Array, jax.Array, dict]:
    """Next-K loss of an `sr` task batch, with the return convention of `loss.task_loss`.

    `sum_loss` = sum over heads of each head's summed cross-entropy (Gloeckle et al. sum the
    K losses); `sum_weight` counts each loss token once (head 1's weight), so the trainer's
    `sum_loss / sum_weight` is the sum of the K per-token losses. Head 1 is computed exactly
    as `task_loss` does; heads 2..K use the vision-only softmax (their targets are always
    high-res codes or `<end>`). Metrics: `loss` (the objective), `ntp_loss` (head 1),
    `head{k}_loss`, `tokens`.
    """
    k = num_heads(cfg) if k is None else int(k)
    if not 1 <= k <= num_heads(cfg):
        raise ValueError(f"sr_loss: k={k} must be in [1, model.nktp_k={cfg.nktp_k}]")
    if k > 1:
        check_heads(cfg, trainable)
    tokens, positions, valid, targets, weights = loss.unpack_task_batch(task_batch)
    h_BxLxD = mars.forward_hidden(frozen, trainable, tokens, positions, valid, layout, cfg)
    b, length, _ = h_BxLxD.shape
    restrict = cfg.image_logits == "vision_only"
    if layout is None:
        bounds = [(None, 0, length)]
    else:
        bounds = layout_lib.bounds(layout_lib.target_layout(layout))
    pieces = [
        (loss.BY_TARGET if m is None else loss.VISION_ONLY if m == layout_lib.VISION else loss.FULL)
        if restrict
        else loss.FULL
        for m, _, _ in bounds
    ]
    # Heads 2..K only ever target high-res codes or <end>: vision target segments.
    vision_bounds = [(s, e) for m, s, e in bounds if m in (None, layout_lib.VISION)]

    def flat(x, start, stop):
        return x[:, start:stop].reshape(b * (stop - start), *x.shape[2:])

    head_sums = []
    ntp = jnp.zeros((), jnp.float32)
    for mode, (_, start, stop) in zip(pieces, bounds, strict=True):
        ntp = ntp + loss.chunked_loss_sum(
            frozen,
            trainable,
            flat(h_BxLxD, start, stop),
            flat(targets, start, stop),
            flat(weights, start, stop),
            mode,
            cfg,
        )
    head_sums.append(ntp)
    sum_weight = jnp.sum(weights)
    metrics = {}
    for j in range(2, k + 1):
        w_j = window_weights(weights, j)
        t_j = window_targets(targets, j)
        total = jnp.zeros((), jnp.float32)
        for start, stop in vision_bounds:
            h_j = head_hidden(trainable, flat(h_BxLxD, start, stop), j, cfg)
            total = total + loss.chunked_loss_sum(
                frozen,
                trainable,
                h_j,
                flat(t_j, start, stop),
                flat(w_j, start, stop),
                loss.VISION_ONLY,
                cfg,
            )
        head_sums.append(total)
        metrics[f"head{j}_loss"] = total / jnp.maximum(jnp.sum(w_j), 1e-9)
    sum_loss = sum(head_sums[1:], head_sums[0])
    denom = jnp.maximum(sum_weight, 1e-9)
    metrics.update({"loss": sum_loss / denom, "ntp_loss": ntp / denom, "tokens": sum_weight})
    return sum_loss, sum_weight, metrics
