"""Image-code noise: some of the codes the model reads are swapped for random codes.

At sampling time the model reads its own draws, mistakes included; in training it reads the
true codes only (teacher forcing). Replacing a share ``rate`` of the image codes it reads
(not the codes it must predict: the targets are separate arrays and stay) makes it predict
from a context with mistakes in it. The noise is a pure function of ``train.seed`` and the
step, so a resumed run draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from mars_jax.tokens import vocab

# Added to ``train.seed`` so that the noise draws differ from the initialisation's.
_NOISE_SEED_OFFSET = 7919


def noise_key(seed: int, step: jax.Array) -> jax.Array:
    """The noise key of one training step."""
    return jax.random.fold_in(jax.random.key(seed + _NOISE_SEED_OFFSET), step)


def corrupt_image_codes(
    arrays: Mapping[str, jax.Array], key: jax.Array, rate: float, codebook_size: int
) -> dict[str, jax.Array]:
    """``arrays`` with each image code of ``tokens`` replaced, with probability ``rate``, by
    a code drawn uniformly from the first ``codebook_size``; text, specials and every other
    array (``targets`` among them) are returned unchanged."""
    tokens_BxL = arrays["tokens"]
    hit_key, code_key = jax.random.split(key)
    hit_BxL = vocab.is_image_code(tokens_BxL) & jax.random.bernoulli(
        hit_key, rate, tokens_BxL.shape
    )
    random_BxL = vocab.FIRST_IMAGE_CODE + jax.random.randint(
        code_key, tokens_BxL.shape, 0, codebook_size
    )
    return {**arrays, "tokens": jnp.where(hit_BxL, random_BxL, tokens_BxL).astype(tokens_BxL.dtype)}


def corrupt_batch(
    batch: Mapping[str, Mapping[str, jax.Array]],
    seed: int,
    step: jax.Array,
    rate: float,
    codebook_size: int,
) -> dict[str, dict[str, jax.Array]]:
    """Every task's arrays of a step's batch (``{task: arrays}``), each task its own draws."""
    key = noise_key(seed, step)
    return {
        task: corrupt_image_codes(arrays, jax.random.fold_in(key, i), rate, codebook_size)
        for i, (task, arrays) in enumerate(sorted(batch.items()))
    }
