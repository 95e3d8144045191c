"""Compiled peak memory of the chunked loss versus the unchunked one.

    python -m mars_jax.bench.loss_memory [--batch=8] [--length=512] [--width=256] [--chunk=512]

Compiles value-and-gradient of the cross-entropy over the joint 160,136-id vocabulary
(text head ⊕ vision head, w.r.t. the hidden states and the vision head, as in training)
for `batch x length` tokens, once chunked (`loss_chunk_size=--chunk`) and once whole, and
reads XLA's `memory_analysis()`: peak = arguments + outputs + temporaries - aliased.
Last line: ``loss_peak_ratio=<chunked/unchunked>``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from mars_jax.model import loss
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import vocab


def peak_bytes(cfg: ModelConfig, tokens: int) -> tuple[int, object]:
    d = cfg.width
    frozen = {"text_head": jax.ShapeDtypeStruct((d, vocab.TEXT_VOCAB_SIZE), jnp.bfloat16)}
    vision_head = jax.ShapeDtypeStruct((d, vocab.VISION_VOCAB_SIZE), jnp.float32)
    h = jax.ShapeDtypeStruct((tokens, d), jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((tokens,), jnp.int32)
    w = jax.ShapeDtypeStruct((tokens,), jnp.float32)

    def f(h, vision_head, frozen, targets, weights):
        tr = {"vision_head": vision_head}
        return loss.chunked_loss_sum(frozen, tr, h, targets, weights, loss.FULL, cfg)

    grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    stats = grad.lower(h, vision_head, frozen, ids, w).compile().memory_analysis()
    peak = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    return peak, stats


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(prog="python -m mars_jax.bench.loss_memory", description=__doc__)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--chunk", type=int, default=512)
    a = p.parse_args(argv)
    tokens = a.batch * a.length
    base = ModelConfig.demo(width=a.width, head_dim=a.width // 4)
    chunked, stats_c = peak_bytes(base.replace(loss_chunk_size=a.chunk), tokens)
    whole, stats_w = peak_bytes(base.replace(loss_chunk_size=0), tokens)
    gib = lambda b: f"{b / 2**30:.3f} GiB"
    print(f"{tokens} tokens x {vocab.VOCAB_SIZE} ids, width {a.width}")
    temp_c = gib(stats_c.temp_size_in_bytes)
    print(f"chunked ({a.chunk} tokens/chunk): peak {gib(chunked)} (temp {temp_c})")
    print(f"unchunked: peak {gib(whole)} (temp {gib(stats_w.temp_size_in_bytes)})")
    ratio = chunked / whole
    print(f"loss_peak_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
