"""The shipped demo VQ tokenizer: it loads, it is small, and the checker survives its round trip."""

import os

import numpy as np

from mars_jax.demo import checker, shapes, train_vq
from mars_jax.vq import checkpoint

ASSET = os.path.join(os.path.dirname(train_vq.__file__), "..", "assets", "demo_vq")


def test_shipped_demo_vq_reconstructs_what_the_checker_needs():
    cfg, params = checkpoint.load_vq(ASSET)  # verifies the stored identity
    assert cfg == train_vq.DEMO_VQ_CONFIG and cfg.latent_size == 8
    size = sum(os.path.getsize(os.path.join(ASSET, f)) for f in os.listdir(ASSET))
    assert size < 5 * 2**20
    data = shapes.make_dataset(24, seed=123, split="eval")  # held-out pairs, unseen by the VQ
    recon = train_vq.reconstruct_uint8(params, cfg, data.images)
    assert recon.shape == data.images.shape and recon.dtype == np.uint8
    verdicts = [checker.check(im, s) for im, s in zip(recon, data.specs, strict=True)]
    acc = checker.accuracies(verdicts)
    assert acc["color"] >= 0.95 and acc["shape"] >= 0.9, acc
