"""Compiled memory and time of blockwise attention versus the materialised reference.

    python -m mars_jax.bench.attention [--text=302] [--image=4098] [--heads=4] [--head_dim=64]

The stage-II text-to-image shape: a text segment (frozen: not differentiated) then an image
segment of `--image` tokens (64 x 64 codes + `<img>`, `<end>`), ~4,400 tokens in all, one
sequence, `--heads` heads, bf16. Compiles value-and-gradient of both segments' attention
w.r.t. the image segment's queries, keys and values, as in training, with
`attention.materialised` and with `attention.blockwise`, reads XLA's `memory_analysis()`
(peak = arguments + outputs + temporaries - aliased) and times a few steps.
Last line: ``attention_peak_ratio=<blockwise/materialised>``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import attention


def make_step(impl: str, valid_t, valid_v):
    """`grad(q_v, k_v, v_v, text qkv, weights)` of both segments' attention outputs."""

    def attend(q, kv, valid):
        if impl == "reference":
            return attention.materialised(q, kv, attention.segment_masks(valid, q.shape[1]))
        return attention.blockwise(q, kv, valid)

    def loss(qkv_v, qkv_t, w_t, w_v):
        (q_t, k_t, v_t), (q_v, k_v, v_v) = qkv_t, qkv_v
        out_t = attend(q_t, [(k_t, v_t)], [valid_t])
        out_v = attend(q_v, [(k_t, v_t), (k_v, v_v)], [valid_t, valid_v])
        f32 = lambda o, w: jnp.sum(o.astype(jnp.float32) * w)
        return f32(out_t, w_t) + f32(out_v, w_v)

    return jax.jit(jax.value_and_grad(loss))


def measure(impl: str, text: int, image: int, heads: int, head_dim: int, repeats: int):
    rng = np.random.default_rng(0)
    dt = jnp.bfloat16
    qkv = lambda n: tuple(
        jnp.asarray(rng.normal(size=(1, n, heads, head_dim)), dt) for _ in range(3)
    )
    qkv_t, qkv_v = qkv(text), qkv(image)
    w_t = jnp.asarray(rng.normal(size=(1, text, heads, head_dim)), jnp.float32)
    w_v = jnp.asarray(rng.normal(size=(1, image, heads, head_dim)), jnp.float32)
    valid_t = jnp.asarray(np.arange(text)[None] >= text // 3)  # left-padded text
    valid_v = jnp.ones((1, image), bool)
    step = make_step(impl, valid_t, valid_v)
    compiled = step.lower(qkv_v, qkv_t, w_t, w_v).compile()
    stats = compiled.memory_analysis()
    peak = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    out = jax.block_until_ready(compiled(qkv_v, qkv_t, w_t, w_v))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(qkv_v, qkv_t, w_t, w_v))
        times.append(time.perf_counter() - t0)
    return peak, stats.temp_size_in_bytes, min(times), out


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(prog="python -m mars_jax.bench.attention", description=__doc__)
    p.add_argument("--text", type=int, default=302)
    p.add_argument("--image", type=int, default=64 * 64 + 2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    print(
        f"{a.text} text + {a.image} image tokens, 1 sequence, {a.heads} heads x {a.head_dim}, "
        f"bf16, value and gradient (image segment), blocks {attention.BLOCK_Q}x{attention.BLOCK_K}"
    )
    gib = lambda b: f"{b / 2**30:.3f} GiB"
    results = {}
    for impl in ("reference", "blockwise"):
        peak, temp, secs, out = measure(impl, a.text, a.image, a.heads, a.head_dim, a.repeats)
        results[impl] = (peak, out)
        print(f"{impl:>10}: peak {gib(peak)} (temp {gib(temp)}), {secs:.2f} s/step")
    (loss_r, grads_r), (loss_b, grads_b) = results["reference"][1], results["blockwise"][1]
    err = max(
        float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
        / float(jnp.max(jnp.abs(y.astype(jnp.float32))))
        for x, y in zip(grads_b, grads_r, strict=True)
    )
    print(f"loss {float(loss_b):.4f} vs {float(loss_r):.4f}; max relative gradient error {err:.1e}")
    ratio = results["blockwise"][0] / results["reference"][0]
    print(f"attention_peak_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
