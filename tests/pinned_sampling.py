"""Codes drawn by the samplers for fixed seeds on tiny random models, pinned in
`tests/data/pinned_codes.json` (written by `python tests/pinned_sampling.py --write`).

The pins were written by the samplers before they moved onto the one incremental decoder
(`mars_jax.model.decoder`); `tests/test_pinned_sampling.py` checks that every sampler still
draws the same codes. The sampled text-to-image pins were written again when each prompt
got its own key (`options.row_keys`), and the sampled exact-mode stage-III pins when each
row of a batch came to advance by its own accepted drafts; the others are the first ones.
`--write` rewrites the pins it computes and keeps the others (the variants in `FEWER`).
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

from mars_jax.model import heads

PIN_FILE = os.path.join(os.path.dirname(__file__), "data", "pinned_codes.json")
# Variants the test skips (pinned all the same): each costs a few compiles.
FEWER = {("bf16", "greedy")}


def _models():
    from mars_jax.model import params
    from mars_jax.model.config import ModelConfig

    out = {}
    for name, kw in (
        ("f32", dict(compute_dtype="float32", frozen_dtype="float32", image_pos_grid=(2, 4))),
        ("bf16", dict(nktp_k=2)),
    ):
        cfg = ModelConfig.tiny(nktp_k=kw.pop("nktp_k", 4), **kw)
        p = params.init_params(cfg, jax.random.key(1))
        trainable = dict(p["trainable"])
        trainable["vision_head"] = trainable["vision_head"] * 4.0
        trainable = _with_heads(cfg, trainable)
        out[name] = (cfg, p["frozen"], trainable)
    return out


def _with_heads(cfg, trainable):

    adapters = heads.init_heads(cfg, jax.random.key(2))
    adapters = jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(5), x.shape), adapters
    )
    return {**trainable, **adapters}


def compute() -> dict[str, list]:
    """Codes of every sampler on both tiny models, as nested lists."""
    from mars_jax.sampling import nktp as nktp_sampling
    from mars_jax.sampling import t2i
    from mars_jax.sampling.options import SamplingConfig

    prompts = [[9707, 1879, 11], [104169, 9370], []]
    rng = np.random.default_rng(0)
    texts = [list(rng.integers(0, 5000, 3)), list(rng.integers(0, 5000, 5))]
    lo = rng.integers(0, 64, (2, 2, 2))
    out = {}
    for name, (cfg, frozen, trainable) in _models().items():
        for tag, scfg in (
            ("greedy", SamplingConfig(cfg_scale=1.0, temperature=0.0, codebook_size=64)),
            ("sampled", SamplingConfig(cfg_scale=2.0, temperature=1.0, top_k=20, codebook_size=64)),
        ):
            if (name, tag) in FEWER:  # the suite's time: the rest of the pins are kept
                continue
            codes = t2i.generate_codes(frozen, trainable, cfg, prompts, 6, (2, 4), scfg, seed=3)
            out[f"t2i/{name}/{tag}"] = np.asarray(codes).tolist()
            for k, mode in ((cfg.nktp_k, "fast"), (cfg.nktp_k, "exact")):
                codes, _ = nktp_sampling.sample_hires_codes(
                    frozen, trainable, cfg, texts, lo, (2, 4), k, mode,
                    text_len=5, scfg=scfg, seed=4,
                )  # fmt: skip
                out[f"nktp/{name}/{tag}/k{k}/{mode}"] = np.asarray(codes).tolist()
    return out


if __name__ == "__main__":
    if "--write" in sys.argv:
        with open(PIN_FILE) as f:
            pins = json.load(f)
        with open(PIN_FILE, "w") as f:
            f.write(json.dumps(pins | compute()) + "\n")
        print(f"wrote {PIN_FILE}")
