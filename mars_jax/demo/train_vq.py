"""Train the demo VQ tokenizer on synthetic shapes scenes and check it with the pixel checker.

    python -m mars_jax.demo.train_vq --out=mars_jax/assets/demo_vq --steps=2400

This is the documented command that reproduces the shipped ``mars_jax/assets/demo_vq``:
``DEMO_VQ_CONFIG`` (64×64 → 8×8 codes, 512 codes) trained by ``mars_jax.vq.train.train_vq``
on ``--num_images`` training-split scenes (held-out color × shape pairs never seen). The
tokenizer bounds every demo result: afterwards the pixel checker scores decode(encode(x)) on
fresh training-split and held-out scenes, and the figures go to ``checker_on_recon.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import jax.numpy as jnp
import numpy as np

from mars_jax.demo import checker, shapes
from mars_jax.vq import images, train
from mars_jax.vq.config import VQConfig
from mars_jax.vq.model import Params

REPORT_FILE = "checker_on_recon.json"

# ``VQConfig.demo()`` slimmed for a 2-core CPU: 8 channels at full resolution (where the conv
# FLOPs are), no attention; ~3× faster a step than ``demo()``. Flat-colored scenes need little.
# One normalisation group: with one channel per group, GroupNorm normalises every channel on
# its own and erases the ratios between channels that carry the color (reconstructions came
# out gray).
DEMO_VQ_CONFIG = dataclasses.replace(
    VQConfig.demo(), base_channels=8, ch_mult=(1, 2, 4, 8), norm_groups=1, mid_attention=False
)


def reconstruct_uint8(params: Params, cfg: VQConfig, images_uint8: np.ndarray, batch: int = 64):
    """decode(encode(x)) as uint8, in batches."""
    out = []
    for i in range(0, len(images_uint8), batch):
        x = jnp.asarray(images.to_unit_range(images_uint8[i : i + batch]))
        out.append(images.to_uint8(np.asarray(train.reconstruct(params, cfg, x))))
    return np.concatenate(out)


def checker_on_reconstructions(
    params: Params, cfg: VQConfig, num: int = 200, seed: int = 1
) -> dict[str, dict[str, float]]:
    """Checker accuracies on reconstructions of fresh scenes: {split: {check: accuracy}}."""
    report = {}
    for split in ("train", "eval"):
        data = shapes.make_dataset(num, seed=seed, split=split)
        recon = reconstruct_uint8(params, cfg, data.images)
        verdicts = [checker.check(im, s) for im, s in zip(recon, data.specs, strict=True)]
        report[split] = checker.accuracies(verdicts)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory of the VQ checkpoint")
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--num_images", type=int, default=4096, help="training scenes")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_check", type=int, default=200, help="scenes per split to check")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)

    cfg = DEMO_VQ_CONFIG
    data = shapes.make_dataset(args.num_images, seed=args.seed, split="train")
    options = train.TrainOptions(
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        log_every=100,
        checkpoint_every=500,
        progress=not args.no_progress,
    )
    result = train.train_vq(data.images, cfg, args.steps, options, out_dir=args.out)
    report = checker_on_reconstructions(result.params, cfg, args.num_check, seed=args.seed + 1)
    report["steps"] = args.steps
    report["vq_identity"] = result.identity
    with open(os.path.join(args.out, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
    for split in ("train", "eval"):
        line = " ".join(f"{k}={v:.3f}" for k, v in report[split].items())
        print(f"checker on reconstructions [{split}]: {line}")
    acc = report["eval"]
    print(f"recon_color_acc={acc['color']:.3f} recon_shape_acc={acc['shape']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
