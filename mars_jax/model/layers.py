"""Qwen decoder pieces as pure functions: RMSNorm, rotary embeddings, projections, SwiGLU.

Numerics follow the Hugging Face Qwen / Qwen2 code, so converted checkpoints give the same
logits: RMSNorm in fp32, rotate-half rotary embeddings, softmax in fp32. Projections take
flattened `[N, D]` activations (N = batch x length): XLA:CPU picks its fast matmul kernel
for 2-D operands, also for the weight gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Finite "minus infinity" for masked attention scores (`attention.py`): a query row
# whose keys are all masked gets a uniform softmax instead of NaN, and is then zeroed.
MASK_VALUE = -1e30


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis, computed in fp32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return y.astype(x.dtype) * scale.astype(x.dtype)


def rotary_cos_sin(positions: jax.Array, head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables `[..., head_dim]` for integer positions `[...]` (rotate-half layout)."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x_NxHxDh: jax.Array, cos_NxDh: jax.Array, sin_NxDh: jax.Array) -> jax.Array:
    """Rotate-half rotary embedding of `[N, heads, head_dim]`, computed in fp32."""
    x = x_NxHxDh.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    y = x * cos_NxDh[:, None, :] + rotated * sin_NxDh[:, None, :]
    return y.astype(x_NxHxDh.dtype)


def dense(x_NxD: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """`x @ w` over the first axis of w (its other axes are flattened and restored)."""
    w2 = w.reshape(w.shape[0], -1).astype(dtype)
    y = jnp.dot(x_NxD.astype(dtype), w2)
    return y.reshape(x_NxD.shape[:-1] + w.shape[1:])


def qkv_projection(
    h_NxD: jax.Array, attn: dict, cos_NxDh: jax.Array, sin_NxDh: jax.Array, dtype
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Q, K, V (with bias, rotary on Q and K) of one expert: `[N, H, Dh]`, `[N, KV, Dh]` x2."""
    if "qkv" in attn:  # `fuse_projections`: one matmul for the three
        sizes = [attn[f"{n}_bias"].size for n in ("q", "k")]
        qkv = dense(h_NxD, attn["qkv"], dtype)
        q, k, v = jnp.split(qkv, [sizes[0], sizes[0] + sizes[1]], axis=-1)
        q, k, v = (
            x.reshape(h_NxD.shape[:-1] + attn[f"{n}_bias"].shape)
            for x, n in zip((q, k, v), ("q", "k", "v"), strict=True)
        )
    else:
        q, k, v = (dense(h_NxD, attn[n], dtype) for n in ("q", "k", "v"))
    q = q + attn["q_bias"].astype(dtype)
    k = k + attn["k_bias"].astype(dtype)
    v = v + attn["v_bias"].astype(dtype)
    return apply_rotary(q, cos_NxDh, sin_NxDh), apply_rotary(k, cos_NxDh, sin_NxDh), v


def swiglu(h_NxD: jax.Array, mlp: dict, dtype) -> jax.Array:
    """`down(silu(gate(h)) * up(h))`; Qwen-1 names: gate = w2, up = w1, down = c_proj."""
    if "gate_up" in mlp:  # `fuse_projections`: one matmul for both
        gate, up = jnp.split(dense(h_NxD, mlp["gate_up"], dtype), 2, axis=-1)
    else:
        gate, up = dense(h_NxD, mlp["gate"], dtype), dense(h_NxD, mlp["up"], dtype)
    return dense(jax.nn.silu(gate) * up, mlp["down"], dtype)


def fuse_projections(layer: dict) -> dict:
    """A layer's weights with Q, K, V as one `[D, (H + 2 KV) Dh]` matrix (`qkv`) and gate and
    up as one `[D, 2F]` (`gate_up`), for decoding: a pass of a few tokens then runs 2 matmuls
    where it ran 5, each with its own dispatch (on CPU, a thread-pool hand-off)."""
    out = {}
    for name, group in layer.items():
        if isinstance(group, dict) and {"q", "k", "v"} <= group.keys():
            flat = [group[n].reshape(group[n].shape[0], -1) for n in ("q", "k", "v")]
            rest = {n: w for n, w in group.items() if n not in ("q", "k", "v")}
            group = {**rest, "qkv": jnp.concatenate(flat, axis=1)}
        elif isinstance(group, dict) and {"gate", "up", "down"} <= group.keys():
            gate_up = jnp.concatenate([group["gate"], group["up"]], axis=1)
            group = {"gate_up": gate_up, "down": group["down"]}
        out[name] = group
    return out


def out_projection(a_NxHxDh: jax.Array, o_HxDhxD: jax.Array, dtype) -> jax.Array:
    """Shared O-projection `[N, H, Dh] -> [N, D]`."""
    n = a_NxHxDh.shape[0]
    return dense(a_NxHxDh.reshape(n, -1), o_HxDhxD.reshape(-1, o_HxDhxD.shape[-1]), dtype)
