"""Cross-entropy over the joint 160,136-way vocabulary, in chunks of tokens.

The `[tokens, 160136]` fp32 logits of a whole batch never exist at once: the tokens are cut
into chunks of `cfg.loss_chunk_size`, a `lax.scan` walks over them, and each chunk's
logits are recomputed in the backward pass. Chunks without any loss-bearing token (e.g. the
text prefix of text-to-image) are skipped at run time, forward and backward. The
log-partition is `logaddexp(lse(text logits), lse(vision logits))`, so the two heads'
logits are never concatenated either.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from mars_jax.model import activation_sharding, heads, layers, mars
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import layout as layout_lib
from mars_jax.tokens import vocab

FULL = "full"  # softmax over all 160,136 ids
VISION_ONLY = "vision_only"  # softmax over the vision head's 8,200 ids
BY_TARGET = "by_target"  # vision-only where the target is a vision id, full elsewhere

ARRAY_KEYS = ("tokens", "positions", "valid", "targets", "loss_mask")


def token_cross_entropy(
    frozen: dict,
    trainable: dict,
    h_NxD: jax.Array,
    targets_N: jax.Array,
    mode: str,
    cfg: ModelConfig,
) -> jax.Array:
    """Per-token cross-entropy `[N]` (fp32) of the joint softmax for hidden states `h`.

    A text target under `vision_only` scores the finite mask value (a huge loss), so a
    layout that disagrees with the data shows up instead of being silently ignored.
    """
    # Only the codebook's codes and the specials: the other codes have zero probability, and
    # a masked constant block in the logits made XLA spend seconds constant-folding its max.
    lv = heads.compact_vision_logits(trainable, h_NxD, cfg)
    target_is_vision = targets_N >= vocab.TEXT_VOCAB_SIZE
    v_ids = jnp.clip(targets_N - vocab.TEXT_VOCAB_SIZE, 0, vocab.VISION_VOCAB_SIZE - 1)
    columns, in_codebook = heads.compact_vision_ids(v_ids, cfg)
    tgt_v = jnp.take_along_axis(lv, columns[:, None], axis=1)[:, 0]
    tgt_v = jnp.where(in_codebook, tgt_v, layers.MASK_VALUE)
    lse_v = jax.nn.logsumexp(lv, axis=-1)
    if mode == VISION_ONLY:
        return lse_v - jnp.where(target_is_vision, tgt_v, layers.MASK_VALUE)
    t_ids = jnp.clip(targets_N, 0, vocab.TEXT_VOCAB_SIZE - 1)
    lse_t, tgt_t = heads.text_lse_and_target(frozen, h_NxD, t_ids, cfg)
    lse = jnp.logaddexp(lse_t, lse_v)
    if mode == BY_TARGET:
        lse = jnp.where(target_is_vision, lse_v, lse)
    return lse - jnp.where(target_is_vision, tgt_v, tgt_t)


def _weighted_loss(text_head, vision_head, h_NxD, targets_N, weights_N, mode, cfg):
    """`sum(weights * cross_entropy)` of one chunk, the heads given explicitly."""
    ce = token_cross_entropy(
        {"text_head": text_head}, {"vision_head": vision_head}, h_NxD, targets_N, mode, cfg
    )
    return jnp.sum(jnp.where(weights_N > 0, weights_N * ce, 0.0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _chunk_loss(text_head, vision_head, h_NxD, targets_N, weights_N, mode, cfg):
    """`_weighted_loss`, skipped at run time when no token of the chunk bears loss.

    A custom VJP keeps the skip cheap in the backward pass too: differentiating `lax.cond`
    directly makes the skipped branch output zero-filled copies of the other branch's
    residuals (for a text chunk two `[chunk, 151936]` fp32 buffers, a third of the demo's
    step). Here the residuals are the inputs, and the backward pass recomputes the logits
    only for chunks that bear loss. The frozen text head gets no gradient.
    """
    return jax.lax.cond(
        jnp.any(weights_N > 0),
        lambda: _weighted_loss(text_head, vision_head, h_NxD, targets_N, weights_N, mode, cfg),
        lambda: jnp.zeros((), jnp.float32),
    )


def _chunk_loss_fwd(text_head, vision_head, h_NxD, targets_N, weights_N, mode, cfg):
    out = _chunk_loss(text_head, vision_head, h_NxD, targets_N, weights_N, mode, cfg)
    return out, (text_head, vision_head, h_NxD, targets_N, weights_N)


def _chunk_loss_bwd(mode, cfg, residuals, g):
    text_head, vision_head, h_NxD, targets_N, weights_N = residuals

    def grads():
        loss_of = lambda vh, h: _weighted_loss(text_head, vh, h, targets_N, weights_N, mode, cfg)
        _, vjp = jax.vjp(loss_of, vision_head, h_NxD)
        return vjp(g)

    def zeros():
        return jnp.zeros_like(vision_head), jnp.zeros_like(h_NxD)

    g_vision_head, g_h = jax.lax.cond(jnp.any(weights_N > 0), grads, zeros)
    return None, g_vision_head, g_h, None, None


_chunk_loss.defvjp(_chunk_loss_fwd, _chunk_loss_bwd)


def chunked_loss_sum(
    frozen: dict,
    trainable: dict,
    h_NxD: jax.Array,
    targets_N: jax.Array,
    weights_N: jax.Array,
    mode: str,
    cfg: ModelConfig,
) -> jax.Array:
    """`sum(weights * cross_entropy)` over N tokens, `cfg.loss_chunk_size` at a time.

    Gradients flow to `h_NxD` and `trainable["vision_head"]` (the text head is frozen).
    """
    weights_N = weights_N.astype(jnp.float32)
    h_NxD = activation_sharding.tokens(h_NxD)
    text_head, vision_head = frozen["text_head"], trainable["vision_head"]

    def chunk_loss(h, t, w):
        return _chunk_loss(text_head, vision_head, h, t, w, mode, cfg)

    n = h_NxD.shape[0]
    chunk = cfg.loss_chunk_size
    if chunk == 0 or chunk >= n:
        return chunk_loss(h_NxD, targets_N, weights_N)
    # Under a mesh whose batch shards split the tokens evenly, a chunk takes `chunk / shards`
    # tokens of every shard, so it stays spread over the devices that hold them (no token
    # moves); without one, chunks are consecutive tokens. The sum does not depend on the order.
    shards = activation_sharding.num_shards()
    shards = shards if n % shards == 0 else 1
    per = -(-chunk // shards)  # tokens of one shard in a chunk
    num_chunks = -(-(n // shards) // per)

    def chunked(x):
        x = x.reshape(shards, n // shards, *x.shape[1:])
        pad = [(0, 0), (0, num_chunks * per - n // shards)] + [(0, 0)] * (x.ndim - 2)
        x = jnp.pad(x, pad).reshape(shards, num_chunks, per, *x.shape[2:])
        x = x.swapaxes(0, 1).reshape(num_chunks, shards * per, *x.shape[3:])
        return activation_sharding.tokens(x, axis=1)

    h, t, w = chunked(h_NxD), chunked(targets_N), chunked(weights_N)

    # Remat the whole step: its only residuals are then the chunk itself, not the heads
    # closed over by the scan, stacked once per chunk.
    @functools.partial(jax.checkpoint, prevent_cse=False)
    def step(total, htw):
        return total + chunk_loss(*htw), None

    total, _ = jax.lax.scan(step, jnp.zeros((), jnp.float32), (h, t, w))
    return total


def unpack_task_batch(task_batch: Mapping) -> tuple[jax.Array, ...]:
    """`(tokens, positions, valid, targets, weights)`; weights = loss_mask on valid tokens."""
    missing = [k for k in ARRAY_KEYS if k not in task_batch]
    if missing:
        raise KeyError(f"task batch lacks {missing}; it has {sorted(task_batch)}")
    tokens, positions, valid = task_batch["tokens"], task_batch["positions"], task_batch["valid"]
    targets = jnp.asarray(task_batch["targets"], jnp.int32)
    weights = jnp.asarray(task_batch["loss_mask"], jnp.float32) * jnp.asarray(valid, jnp.float32)
    return tokens, positions, valid, targets, weights


def task_loss(
    frozen: dict,
    trainable: dict,
    task_batch: Mapping,
    layout: layout_lib.Layout | None,
    cfg: ModelConfig,
) -> tuple[jax.Array, jax.Array, dict]:
    """Summed token loss, summed weight and metrics of one task batch.

    `task_batch` holds `[B, L]` arrays `tokens, positions, valid, targets, loss_mask` (other
    keys, such as its layout, are ignored). Padding (`valid=False`) never counts.
    """
    tokens, positions, valid, targets, weights = unpack_task_batch(task_batch)
    h_BxLxD = mars.forward_hidden(frozen, trainable, tokens, positions, valid, layout, cfg)
    b, length, d = h_BxLxD.shape
    restrict = cfg.image_logits == "vision_only"
    if layout is None:
        pieces = [(BY_TARGET if restrict else FULL, 0, length)]
    else:
        pieces = [
            (VISION_ONLY if restrict and m == layout_lib.VISION else FULL, start, stop)
            for m, start, stop in layout_lib.bounds(layout_lib.target_layout(layout))
        ]
    sum_loss = jnp.zeros((), jnp.float32)
    for mode, start, stop in pieces:
        flat = lambda x, start=start, stop=stop: x[:, start:stop].reshape(
            b * (stop - start), *x.shape[2:]
        )
        sum_loss = sum_loss + chunked_loss_sum(
            frozen, trainable, flat(h_BxLxD), flat(targets), flat(weights), mode, cfg
        )
    sum_weight = jnp.sum(weights)
    metrics = {"loss": sum_loss / jnp.maximum(sum_weight, 1e-9), "tokens": sum_weight}
    return sum_loss, sum_weight, metrics


# ------------------------------------------------------------------------------ next-K loss (stage III)


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
    k = heads.num_heads(cfg) if k is None else int(k)
    if not 1 <= k <= heads.num_heads(cfg):
        raise ValueError(f"sr_loss: k={k} must be in [1, model.nktp_k={cfg.nktp_k}]")
    if k > 1:
        heads.check_heads(cfg, trainable)
    tokens, positions, valid, targets, weights = unpack_task_batch(task_batch)
    h_BxLxD = mars.forward_hidden(frozen, trainable, tokens, positions, valid, layout, cfg)
    b, length, _ = h_BxLxD.shape
    restrict = cfg.image_logits == "vision_only"
    if layout is None:
        bounds = [(None, 0, length)]
    else:
        bounds = layout_lib.bounds(layout_lib.target_layout(layout))
    pieces = [
        (BY_TARGET if m is None else VISION_ONLY if m == layout_lib.VISION else FULL)
        if restrict
        else FULL
        for m, _, _ in bounds
    ]
    # Heads 2..K only ever target high-res codes or <end>: vision target segments.
    vision_bounds = [(s, e) for m, s, e in bounds if m in (None, layout_lib.VISION)]

    def flat(x, start, stop):
        return x[:, start:stop].reshape(b * (stop - start), *x.shape[2:])

    head_sums = []
    ntp = jnp.zeros((), jnp.float32)
    for mode, (_, start, stop) in zip(pieces, bounds, strict=True):
        ntp = ntp + chunked_loss_sum(
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
            h_j = heads.head_hidden(trainable, flat(h_BxLxD, start, stop), j, cfg)
            total = total + chunked_loss_sum(
                frozen,
                trainable,
                h_j,
                flat(t_j, start, stop),
                flat(w_j, start, stop),
                VISION_ONLY,
                cfg,
            )
        head_sums.append(total)
        metrics[f"head{j}_loss"] = total / jnp.maximum(jnp.sum(w_j), 1e-9)
    sum_loss = sum(head_sums[1:], head_sums[0])
    denom = jnp.maximum(sum_weight, 1e-9)
    metrics.update({"loss": sum_loss / denom, "ntp_loss": ntp / denom, "tokens": sum_weight})
    return sum_loss, sum_weight, metrics


def total_loss(
    frozen: dict,
    trainable: dict,
    batch: Mapping[str, Mapping],
    layouts,
    cfg: ModelConfig,
    task_weights=(),
) -> tuple[jax.Array, dict]:
    """Weighted mean token loss over all tasks of a batch, and flat per-task metrics.

    Each token of task `t` weighs `task_weights[t]` (default 1): the loss is
    `sum_t w_t * S_t / sum_t w_t * N_t` (`S_t`: the task's summed token loss, `N_t`: its
    tokens). With all weights 1 each token counts once whatever task it comes from; a
    larger caption weight lets stage I's short captions steer the shared parameters
    (docs/RESULTS.md). `layouts` maps task name to layout and `task_weights` task name to
    weight (dicts, or tuples of `(name, value)` pairs, which are hashable for `jit`); a
    weight for a task the batch lacks is unused.
    `metrics["tokens"]` counts tokens; `metrics["loss_weight"]` is the weighted count the
    loss is divided by (gradient accumulation combines micro-batches by it).
    """
    layouts, weights = dict(layouts), dict(task_weights)
    sum_loss = jnp.zeros((), jnp.float32)
    sum_weight = jnp.zeros((), jnp.float32)
    num_tokens = jnp.zeros((), jnp.float32)
    metrics = {}
    for name in sorted(batch):
        if name not in layouts:
            raise KeyError(f"no layout for task {name!r}; layouts given for {sorted(layouts)}")
        # Stage III with next-K heads: the next-K-token loss (docs/NKTP.md).
        fn = sr_loss if name == "sr" and cfg.nktp_k > 1 else task_loss
        task_sum, task_tokens, task_metrics = fn(frozen, trainable, batch[name], layouts[name], cfg)
        w = float(weights.get(name, 1.0))
        sum_loss, sum_weight = sum_loss + w * task_sum, sum_weight + w * task_tokens
        num_tokens = num_tokens + task_tokens
        metrics.update({f"{name}/{k}": v for k, v in task_metrics.items()})
    loss = sum_loss / jnp.maximum(sum_weight, 1e-9)
    metrics["loss"] = loss
    metrics["tokens"] = num_tokens
    metrics["loss_weight"] = sum_weight
    return loss, metrics
