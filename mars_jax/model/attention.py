"""Attention of one query segment over its key blocks: materialised, blockwise, cuDNN.

The SemVIE forward (`mars.forward_segments`) cuts a sequence into segments; the queries of
segment i see the keys of every earlier segment (where valid) and, causally, their own.
Keys stay separate blocks, one per segment, so that keys and values which depend on frozen
weights only (the text stream of text-to-image) get no gradient computed for them.

Implementations (`ModelConfig.attention`):

- "reference": `materialised`, the `[B, heads, Lq, Lk]` fp32 scores of every block, one joint
  softmax. Simple, and the fastest for short sequences, but at 4,400 tokens and 32 heads the
  scores alone are 2.5 GB per sequence and layer, plus as much again for their gradient.
- "blockwise": `blockwise`, online softmax over query blocks x key blocks (the
  FlashAttention recurrence) with a custom VJP that recomputes each block's probabilities
  from the saved log-sum-exp in the backward pass, so neither pass holds more than one
  `[B, heads, block_q, block_k]` tile of scores. Key blocks above the causal diagonal are
  never visited; key blocks without a valid key are skipped at run time. Each key segment
  is a separate custom-VJP call returning its normalised output and log-sum-exp, combined
  by a (differentiable) log-sum-exp weighting; the backward pass of a call computes key and
  value gradients only when its keys are differentiated (`symbolic_zeros`), and is not
  traced at all for a call whose inputs are all frozen.
- "auto": `jax.nn.dot_product_attention(implementation="cudnn")` on GPU with a half-precision
  compute dtype (the key blocks concatenated and the block-causal layout given as a boolean
  mask), "blockwise" elsewhere. On TPU the natural kernel is Pallas splash attention
  (`jax.experimental.pallas.ops.tpu.splash_attention`, block-sparse masks); it is not wired
  in: it runs only on TPU hardware, which this code base cannot test, so TPU uses
  "blockwise".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Finite "minus infinity" (as `layers.MASK_VALUE`; not imported to keep this module leaf-level).
MASK_VALUE = -1e30
IMPLEMENTATIONS = ("reference", "blockwise", "auto")
BLOCK_Q = 512
BLOCK_K = 512

# Tests set this to a list: each traced blockwise backward appends `(dq, dkv, causal)`,
# whether it computes query and key/value gradients and whether it is a diagonal block.
TRACE_BACKWARD: list | None = None


def segment_masks(key_valid_blocks, q_len: int) -> list[jax.Array]:
    """`[B, Lq, Lk_j]` masks of `materialised`: the last block is the queries' own segment
    (causal), the earlier ones are fully visible; both only where the key is valid."""
    masks = []
    for j, valid in enumerate(key_valid_blocks):
        b, k_len = valid.shape
        if j == len(key_valid_blocks) - 1:
            causal = jnp.tril(jnp.ones((q_len, k_len), bool))
            masks.append(causal[None] & valid[:, None, :])
        else:
            masks.append(jnp.broadcast_to(valid[:, None, :], (b, q_len, k_len)))
    return masks


def _grouped_queries(q_BxQxHxDh: jax.Array, kv_heads: int) -> jax.Array:
    """Queries `[B, Q, KV, H / KV, Dh]`, scaled by `Dh ** -0.5` (grouped-query attention)."""
    b, nq, h, dh = q_BxQxHxDh.shape
    return q_BxQxHxDh.reshape(b, nq, kv_heads, h // kv_heads, dh) * jnp.asarray(
        dh**-0.5, q_BxQxHxDh.dtype
    )


def _visible_softmax(scores_BxGxRxQxK: jax.Array, visible_BxQxK: jax.Array) -> jax.Array:
    """Softmax of masked scores over the keys; a query row without any visible key gets
    zeros instead of a uniform spread over masked keys."""
    probs = jax.nn.softmax(scores_BxGxRxQxK, axis=-1)
    any_key = jnp.any(visible_BxQxK, axis=-1)[:, None, None, :, None]
    return jnp.where(any_key, probs, 0.0)


def materialised(q_BxQxHxDh, kv_blocks, mask_blocks) -> jax.Array:
    """Softmax attention over keys given as separate blocks `[(k, v), ...]`, each with its
    boolean mask `[B, Lq, Lk_j]`; scores are computed per block and normalised jointly.
    A query row without any visible key gets zeros."""
    b, nq, h, dh = q_BxQxHxDh.shape
    q = _grouped_queries(q_BxQxHxDh, kv_blocks[0][0].shape[2])
    scores = [
        jnp.where(
            m[:, None, None],
            jnp.einsum("bqgrd,bkgd->bgrqk", q, k, preferred_element_type=jnp.float32),
            MASK_VALUE,
        )
        for (k, _), m in zip(kv_blocks, mask_blocks, strict=True)
    ]
    sizes = [s.shape[-1] for s in scores]
    probs = _visible_softmax(
        jnp.concatenate(scores, axis=-1), jnp.concatenate(mask_blocks, axis=-1)
    )
    out, start = 0.0, 0
    for (_, v), n in zip(kv_blocks, sizes, strict=True):
        p = probs[..., start : start + n].astype(v.dtype)
        out = out + jnp.einsum("bgrqk,bkgd->bqgrd", p, v)
        start += n
    return out.reshape(b, nq, h, dh)


def cached(q_BxQxHxDh, kT_BxGxDhxS, v_BxGxSxDh, visible_BxQxS) -> jax.Array:
    """`materialised` over a decoding cache in its own layouts (keys `[B, KV, Dh, S]`, values
    `[B, KV, S, Dh]`; `model/decoder.py`), one block with its mask `[B, Lq, S]`."""
    b, nq, h, dh = q_BxQxHxDh.shape
    q = _grouped_queries(q_BxQxHxDh, kT_BxGxDhxS.shape[1])
    kT = kT_BxGxDhxS
    if jax.default_backend() == "cpu" and q.dtype != jnp.float32:
        # XLA:CPU has no bf16 x bf16 -> f32 dot; the upcast products are the same values.
        q, kT = q.astype(jnp.float32), kT.astype(jnp.float32)
    scores = jnp.einsum("bqgrd,bgdk->bgrqk", q, kT, preferred_element_type=jnp.float32)
    scores = jnp.where(visible_BxQxS[:, None, None], scores, MASK_VALUE)
    probs = _visible_softmax(scores, visible_BxQxS).astype(v_BxGxSxDh.dtype)
    return jnp.einsum("bgrqk,bgkd->bqgrd", probs, v_BxGxSxDh).reshape(b, nq, h, dh)


# ---- blockwise ---------------------------------------------------------------------------


def _blocks(n: int, target: int) -> tuple[int, int]:
    """`(block, count)`: `count` blocks of `block` >= n tokens, each at most about `target`."""
    count = -(-n // target)
    if count == 1:
        return n, 1
    block = -(-n // count)
    block = -(-block // 8) * 8
    return block, -(-n // block)


def _pad_axis(x, axis: int, size: int, value=0):
    pad = size - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def _split(x, axis: int, block: int, count: int, value=0):
    """`x` padded along `axis` to `block * count` and cut into `[count, ..., block, ...]`."""
    x = _pad_axis(x, axis, block * count, value)
    shape = x.shape[:axis] + (count, block) + x.shape[axis + 1 :]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _tile_mask(valid_BxK, causal: bool, qi, kj, bq: int, bk: int):
    """`[B, 1, 1, bq, bk]` visibility of key block kj to query block qi."""
    mask = valid_BxK[:, None, None, None, :]
    if causal:
        q_pos = qi * bq + jnp.arange(bq)
        k_pos = kj * bk + jnp.arange(bk)
        mask = mask & (q_pos[:, None] >= k_pos[None, :])
    return mask


def _causal_last_key_block(qi, causal: bool, bq: int, bk: int, nk: int):
    if not causal:
        return nk
    return jnp.minimum(nk, ((qi + 1) * bq - 1) // bk + 1)


def _forward(q, k, v, valid, causal: bool, block_q: int, block_k: int):
    """`(out [B, Lq, G, R, Dh] fp32, lse [B, G, R, Lq] fp32)`; q is already scaled."""
    b, lq, g, r, dh = q.shape
    lk = k.shape[1]
    bq, nq = _blocks(lq, block_q)
    bk, nk = _blocks(lk, block_k)
    qs = _split(q, 1, bq, nq)
    ks, vs = _split(k, 1, bk, nk), _split(v, 1, bk, nk)
    ms = _split(valid, 1, bk, nk, False)

    def query_block(args):
        qi, q_i = args

        def key_block(kj, carry):
            def visit(carry):
                m, den, acc = carry
                s = jnp.einsum("bqgrd,bkgd->bgrqk", q_i, ks[kj], preferred_element_type=jnp.float32)
                mask = _tile_mask(ms[kj], causal, qi, kj, bq, bk)
                s = jnp.where(mask, s, MASK_VALUE)
                m_new = jnp.maximum(m, jnp.max(s, axis=-1))
                p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
                corr = jnp.exp(m - m_new)
                pv = jnp.einsum(
                    "bgrqk,bkgd->bgrqd",
                    p.astype(v.dtype),
                    vs[kj],
                    preferred_element_type=jnp.float32,
                )
                return m_new, den * corr + jnp.sum(p, axis=-1), acc * corr[..., None] + pv

            return jax.lax.cond(jnp.any(ms[kj]), visit, lambda c: c, carry)

        init = (
            jnp.full((b, g, r, bq), MASK_VALUE, jnp.float32),
            jnp.zeros((b, g, r, bq), jnp.float32),
            jnp.zeros((b, g, r, bq, dh), jnp.float32),
        )
        hi = _causal_last_key_block(qi, causal, bq, bk, nk)
        m, den, acc = jax.lax.fori_loop(0, hi, key_block, init)
        seen = den > 0
        out = jnp.where(seen[..., None], acc / jnp.where(seen, den, 1.0)[..., None], 0.0)
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, den, 1.0)), MASK_VALUE)
        return jnp.moveaxis(out, 3, 1), lse  # [B, bq, G, R, Dh], [B, G, R, bq]

    out, lse = jax.lax.map(query_block, (jnp.arange(nq), qs))
    out = jnp.moveaxis(out, 0, 1).reshape(b, nq * bq, g, r, dh)[:, :lq]
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, g, r, nq * bq)[..., :lq]
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _segment(q, k, v, valid, causal, block_q, block_k):
    return _forward(q, k, v, valid, causal, block_q, block_k)


def _segment_fwd(q, k, v, valid, causal, block_q, block_k):
    out, lse = _forward(q.value, k.value, v.value, valid.value, causal, block_q, block_k)
    # Which gradients the backward pass needs, as a static shape (residuals are arrays).
    need = jnp.zeros((int(q.perturbed), int(k.perturbed or v.perturbed)), bool)
    return (out, lse), (q.value, k.value, v.value, valid.value, out, lse, need)


def _segment_bwd(causal, block_q, block_k, res, cotangents):
    q, k, v, valid, out, lse, need = res
    need_dq, need_dkv = (bool(n) for n in need.shape)
    if TRACE_BACKWARD is not None:
        TRACE_BACKWARD.append((need_dq, need_dkv, causal))
    d_out, d_lse = cotangents
    if isinstance(d_out, jax.custom_derivatives.SymbolicZero):
        d_out = jnp.zeros(out.shape, jnp.float32)
    if isinstance(d_lse, jax.custom_derivatives.SymbolicZero):
        d_lse = jnp.zeros(lse.shape, jnp.float32)
    b, lq, g, r, dh = q.shape
    lk = k.shape[1]
    bq, nq = _blocks(lq, block_q)
    bk, nk = _blocks(lk, block_k)
    # dS = P * (dP - delta), delta = rowsum(dO * O) - dlse (the lse output's own gradient).
    delta = jnp.moveaxis(jnp.sum(d_out * out, axis=-1), 1, 3) - d_lse  # [B, G, R, Lq]
    qs, dos = _split(q, 1, bq, nq), _split(d_out.astype(q.dtype), 1, bq, nq)
    lses = _split(lse, 3, bq, nq)
    deltas = _split(delta, 3, bq, nq)
    ks, vs = _split(k, 1, bk, nk), _split(v, 1, bk, nk)
    ms = _split(valid, 1, bk, nk, False)

    def key_block(dq, args):
        kj, k_j, v_j, valid_j = args

        def query_block(qi, carry):
            dq, dk, dv = carry
            q_i, do_i = qs[qi], dos[qi]
            s = jnp.einsum("bqgrd,bkgd->bgrqk", q_i, k_j, preferred_element_type=jnp.float32)
            mask = _tile_mask(valid_j, causal, qi, kj, bq, bk)
            p = jnp.exp(jnp.where(mask, s - lses[qi][..., None], MASK_VALUE))
            dp = jnp.einsum("bqgrd,bkgd->bgrqk", do_i, v_j, preferred_element_type=jnp.float32)
            ds = p * (dp - deltas[qi][..., None])
            if need_dq:
                dq_i = jnp.einsum(
                    "bgrqk,bkgd->bqgrd", ds.astype(k.dtype), k_j, preferred_element_type=jnp.float32
                )
                dq = dq.at[qi].add(dq_i)
            if need_dkv:
                dv = dv + jnp.einsum(
                    "bgrqk,bqgrd->bkgd", p.astype(v.dtype), do_i, preferred_element_type=jnp.float32
                )
                dk = dk + jnp.einsum(
                    "bgrqk,bqgrd->bkgd", ds.astype(q.dtype), q_i, preferred_element_type=jnp.float32
                )
            return dq, dk, dv

        zeros_kv = jnp.zeros((b, bk, g, dh), jnp.float32)
        lo = (kj * bk) // bq if causal else 0
        dq, dk, dv = jax.lax.cond(
            jnp.any(valid_j),
            lambda c: jax.lax.fori_loop(lo, nq, query_block, c),
            lambda c: c,
            (dq, zeros_kv, zeros_kv),
        )
        return dq, (dk, dv)

    dq0 = jnp.zeros((nq, b, bq, g, r, dh), jnp.float32)
    dq, (dk, dv) = jax.lax.scan(key_block, dq0, (jnp.arange(nk), ks, vs, ms))
    dq = jnp.moveaxis(dq, 0, 1).reshape(b, nq * bq, g, r, dh)[:, :lq].astype(q.dtype)
    unblock = lambda x, like: (
        jnp.moveaxis(x, 0, 1).reshape(b, nk * bk, g, dh)[:, :lk].astype(like.dtype)
    )
    return (
        dq if need_dq else None,
        unblock(dk, k) if need_dkv else None,
        unblock(dv, v) if need_dkv else None,
        None,
    )


_segment.defvjp(_segment_fwd, _segment_bwd, symbolic_zeros=True)


def blockwise(
    q_BxQxHxDh,
    kv_blocks,
    key_valid_blocks,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """`materialised` with the masks of `segment_masks`, computed block by block.

    `key_valid_blocks[j]`: `[B, Lk_j]` validity of block j's keys; the last block is the
    queries' own segment (same positions, causal). Blocks default to `BLOCK_Q` x `BLOCK_K`.
    """
    block_q, block_k = block_q or BLOCK_Q, block_k or BLOCK_K
    b, nq, h, dh = q_BxQxHxDh.shape
    q = _grouped_queries(q_BxQxHxDh, kv_blocks[0][0].shape[2])
    last = len(kv_blocks) - 1
    parts = [
        _segment(q, k, v, jnp.asarray(valid, bool), j == last, block_q, block_k)
        for j, ((k, v), valid) in enumerate(zip(kv_blocks, key_valid_blocks, strict=True))
    ]
    if len(parts) == 1:
        out = parts[0][0]
    else:
        lses = jnp.stack([lse for _, lse in parts])
        weights = jnp.exp(lses - jax.nn.logsumexp(lses, axis=0))  # [J, B, G, R, Lq]
        weights = jnp.moveaxis(weights, 4, 2)[..., None]  # [J, B, Lq, G, R, 1]
        out = sum(w * o for w, (o, _) in zip(weights, parts, strict=True))
    return out.astype(q_BxQxHxDh.dtype).reshape(b, nq, h, dh)


# ---- cuDNN ---------------------------------------------------------------------------------


def cudnn(q_BxQxHxDh, kv_blocks, key_valid_blocks) -> jax.Array:
    """`jax.nn.dot_product_attention(implementation="cudnn")` over the concatenated key
    blocks with the block-causal mask (GPU, bf16/fp16). Key/value gradients of frozen blocks
    are computed and dropped here (one kernel over all keys)."""
    k = jnp.concatenate([k for k, _ in kv_blocks], axis=1)
    v = jnp.concatenate([v for _, v in kv_blocks], axis=1)
    masks = segment_masks(key_valid_blocks, q_BxQxHxDh.shape[1])
    mask = jnp.concatenate(masks, axis=-1)[:, None]  # [B, 1, Lq, Lk]
    out = jax.nn.dot_product_attention(q_BxQxHxDh, k, v, mask=mask, implementation="cudnn")
    any_key = jnp.any(mask[:, 0], axis=-1)[:, :, None, None]
    return jnp.where(any_key, out, 0).astype(q_BxQxHxDh.dtype)


def resolve(implementation: str, compute_dtype: str) -> str:
    """The implementation "auto" stands for on this backend: "cudnn" or "blockwise"."""
    if implementation != "auto":
        return implementation
    half = compute_dtype in ("bfloat16", "float16")
    return "cudnn" if jax.default_backend() == "gpu" and half else "blockwise"


def attend(q_BxQxHxDh, kv_blocks, key_valid_blocks, implementation: str, compute_dtype: str):
    """Attention of a query segment over `kv_blocks` (its own segment last, causal)."""
    impl = resolve(implementation, compute_dtype)
    if impl == "reference":
        masks = segment_masks(key_valid_blocks, q_BxQxHxDh.shape[1])
        return materialised(q_BxQxHxDh, kv_blocks, masks)
    if impl == "blockwise":
        return blockwise(q_BxQxHxDh, kv_blocks, key_valid_blocks)
    if impl == "cudnn":
        return cudnn(q_BxQxHxDh, kv_blocks, key_valid_blocks)
    raise ValueError(f"attention implementation {implementation!r} not in {IMPLEMENTATIONS}")
