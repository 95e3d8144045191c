"""Benchmark: images per second of the text-to-image sampler, as `evaluate` draws them.

    python -m mars_jax.bench.sampler [--preset=demo] [--batch=16] [--grid=8] [--repeats=3]

Draws `batch` images of `grid` x `grid` codes per call with classifier-free guidance (two
decoder rows per image, scale 2.5) and temperature 0.4, from a randomly initialised model of
the preset (no checkpoint needed), with the decode weights prepared once as `evaluate` and
`generate` do. One call compiles; the best of `repeats` timed calls is reported. The cost of a
step grows with the rows and the cache slots, so `--batch` is the figure to vary. The last
line is `t2i_images_per_s=<x>`.
"""

from __future__ import annotations

import time

import jax

from mars_jax import cli
from mars_jax.model import decoder, params
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import t2i
from mars_jax.sampling.options import SamplingConfig

CODEBOOK = 512  # the demo VQ's codes


def images_per_second(preset: str, batch: int, grid: int, text_len: int, repeats: int) -> float:
    """Best-of-`repeats` throughput of `t2i.generate_codes` after one compiling call."""
    cfg = getattr(ModelConfig, preset)(image_logits="vision_only", compute_dtype="float32")
    weights = params.init_params(cfg, jax.random.key(0))
    prepared = decoder.prepare(weights["frozen"], weights["trainable"], cfg, CODEBOOK, "float32")
    prompts = [list(range(100 + i, 100 + i + text_len // 2)) for i in range(batch)]
    scfg = SamplingConfig(cfg_scale=2.5, temperature=0.4, codebook_size=CODEBOOK)

    def draw(seed: int):
        return t2i.generate_codes(prepared, None, cfg, prompts, text_len, (grid, grid), scfg, seed)

    draw(0)
    best = float("inf")
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        draw(seed)
        best = min(best, time.perf_counter() - start)
    return batch / best


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("bench.sampler", __doc__)
    p.add_argument("--preset", default="demo", choices=("tiny", "demo"))
    p.add_argument("--batch", type=int, default=16, help="images per call")
    p.add_argument("--grid", type=int, default=8, help="image side in codes")
    p.add_argument("--text_len", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    for flag in ("batch", "grid", "text_len", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    rate = images_per_second(args.preset, args.batch, args.grid, args.text_len, args.repeats)
    print(f"preset={args.preset} batch={args.batch} codes={args.grid**2} guided=True")
    print(f"t2i_images_per_s={rate:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
