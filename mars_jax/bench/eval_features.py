"""Benchmark: evaluation feature throughput (FID Inception pool3, CLIP image tower).

    python -m mars_jax.bench.eval_features [--batch=4] [--repeats=2] [--size=256] [--clip=b32]

Random weights of the real shapes (no download): the FID Inception-v3 (23.8M parameters;
host-side bilinear resize of ``--size``² uint8 images to 299², then the network) and the
CLIP image tower (``b32``: ViT-B/32, ``l14``: ViT-L/14; PIL bicubic resize + center crop to
224, then the tower). Compilation is excluded (one warm-up batch); the timed loop runs the
same path as ``--bench=coco``'s scoring. Prints each network's images/s, then
``eval_features_images_per_s=<x>``: images/s through both (``1 / (1/a + 1/b)``), i.e. the
scoring rate of ``--bench=coco`` per generated image.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mars_jax.eval import clip, inception


def images_per_s(fn, images: np.ndarray, repeats: int) -> float:
    fn(images)  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        fn(images)
    return repeats * len(images) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--size", type=int, default=256, help="side of the input images")
    p.add_argument("--clip", choices=("b32", "l14"), default="b32")
    args = p.parse_args(argv)

    images = np.random.default_rng(0).integers(
        0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8
    )
    inc = inception.InceptionFeatures(inception.init_params(seed=0), batch_size=args.batch)
    a = images_per_s(inc.image_features, images, args.repeats)
    print(f"inception_images_per_s={a:.3f}")

    cfg = clip.VIT_B32 if args.clip == "b32" else clip.VIT_L14
    state = clip.random_state_dict(cfg, seed=0)
    model = clip.ClipModel(cfg, clip.params_from_state_dict(state, cfg), None)
    model.batch_size = args.batch
    b = images_per_s(model.image_features, images, args.repeats)
    print(f"clip_{args.clip}_images_per_s={b:.3f}")
    print(f"eval_features_images_per_s={1.0 / (1.0 / a + 1.0 / b):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
