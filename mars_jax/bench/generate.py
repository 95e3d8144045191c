"""Benchmark: KV-cache sampling vs recomputing the whole sequence for every code.

    python -m mars_jax.bench.generate [--preset=demo] [--grid=16] [--batch=4] [--repeats=3]

Both decoders draw the same image greedily (the test suite checks they agree token for
token); the recompute decoder runs one jitted full forward over the padded final-length
sequence per code (and the logits of the current position only), so neither side
recompiles inside the timed loop. Prints the seconds of
each and last `kv_cache_speedup=<recompute / cached>`.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import heads, mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import interleaved, t2i
from mars_jax.sampling.options import SamplingConfig
from mars_jax.tokens import formats, vocab


@functools.partial(jax.jit, static_argnames=("cfg", "codebook"))
def _next_code_by_recompute(frozen, trainable, tokens, positions, valid, t, *, cfg, codebook):
    hidden = mars.forward_hidden(frozen, trainable, tokens, positions, valid, None, cfg)
    h_Bx1xD = jax.lax.dynamic_slice_in_dim(hidden, t, 1, axis=1)
    last = heads.logits_from_hidden(frozen, trainable, h_Bx1xD, cfg, vision_only=True)[:, 0]
    return jnp.argmax(interleaved.code_logits(last, codebook), axis=-1).astype(jnp.int32)


def recompute_decode(frozen, trainable, cfg, rows, num_codes, codebook):
    """Greedy codes by a full forward per step over the padded final-length sequence."""
    b, p = rows["tokens"].shape
    tokens = np.full((b, p + num_codes), vocab.PAD, np.int32)
    positions = np.zeros_like(tokens)
    valid = np.zeros(tokens.shape, bool)
    tokens[:, :p], positions[:, :p], valid[:, :p] = rows["tokens"], rows["positions"], rows["valid"]
    tokens, positions, valid = jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid)
    codes = []
    for i in range(num_codes):
        t = p - 1 + i
        code = _next_code_by_recompute(
            frozen, trainable, tokens, positions, valid, t, cfg=cfg, codebook=codebook
        )
        codes.append(code)
        tokens = tokens.at[:, t + 1].set(vocab.code_to_token(code))
        positions = positions.at[:, t + 1].set(positions[:, t] + 1)
        valid = valid.at[:, t + 1].set(True)
    return np.asarray(jnp.stack(codes, axis=1))


def _time(fn, repeats: int) -> float:
    fn()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="demo", choices=("tiny", "demo"))
    p.add_argument("--grid", type=int, default=8, help="image side in codes")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text_len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    cfg = getattr(ModelConfig, args.preset)(image_logits="vision_only")
    weights = params.init_params(cfg, jax.random.key(0))
    frozen, trainable = weights["frozen"], weights["trainable"]
    codebook = 1024
    prompts = [list(range(100, 100 + args.text_len // 2))] * args.batch
    rows = formats.t2i_prompt(prompts, args.text_len)
    num_codes = args.grid * args.grid
    scfg = SamplingConfig(cfg_scale=1.0, temperature=0.0, codebook_size=codebook)

    def cached():
        return t2i.generate_codes(
            frozen, trainable, cfg, prompts, args.text_len, (args.grid, args.grid), scfg, 0
        )

    def recompute():
        return recompute_decode(frozen, trainable, cfg, rows, num_codes, codebook)

    t_cached = _time(cached, args.repeats)
    t_recompute = _time(recompute, args.repeats)
    agree = np.mean(cached().reshape(args.batch, -1) == recompute())
    print(f"preset={args.preset} batch={args.batch} codes={num_codes} text_len={args.text_len}")
    print(f"cached_s={t_cached:.3f} recompute_s={t_recompute:.3f} greedy_agreement={agree:.3f}")
    print(f"kv_cache_speedup={t_recompute / t_cached:.2f}")


if __name__ == "__main__":
    main()
