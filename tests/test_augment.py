"""Image-code noise (`train.image_code_noise`, train_lib/augment.py): which tokens it may
touch, how many, and that a step's noise is a function of the seed and the step alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.tokens import vocab
from mars_jax.train_lib import augment

CODEBOOK = 512


def _arrays(rows: int = 64) -> dict:
    """Rows of 8 text ids, `<img>`, 64 image codes, `<end>`; targets a copy of the tokens."""
    rng = np.random.default_rng(0)
    text = rng.integers(0, 151_000, (rows, 8))
    codes = vocab.FIRST_IMAGE_CODE + rng.integers(0, CODEBOOK, (rows, 64))
    tokens = np.concatenate(
        [text, np.full((rows, 1), vocab.IMAGE_START), codes, np.full((rows, 1), vocab.IMAGE_END)],
        axis=1,
    ).astype(np.int32)
    return {"tokens": jnp.asarray(tokens), "targets": jnp.asarray(tokens.copy())}


def test_only_image_codes_change_about_the_asked_share_and_stay_codes():
    arrays = _arrays()
    out = augment.corrupt_image_codes(arrays, augment.noise_key(0, jnp.int32(5)), 0.25, CODEBOOK)
    before, after = np.asarray(arrays["tokens"]), np.asarray(out["tokens"])
    is_code = np.asarray(vocab.is_image_code(before))
    np.testing.assert_array_equal(after[~is_code], before[~is_code])  # text, <img>, <end>
    np.testing.assert_array_equal(np.asarray(out["targets"]), before)  # what it must predict
    changed = after[is_code] != before[is_code]
    # Each code is redrawn with probability 0.25, and a redraw hits its own code 1/512 of
    # the time: 4,096 codes, mean ~1,022, sd ~28.
    assert 900 < changed.sum() < 1150
    assert np.all(np.asarray(vocab.is_image_code(after[is_code])))
    assert after[is_code].max() < vocab.FIRST_IMAGE_CODE + CODEBOOK


def test_the_noise_is_a_function_of_seed_and_step():
    arrays = _arrays(8)
    batch = {"t2i": arrays, "caption": arrays}

    def draw(seed, step):
        out = augment.corrupt_batch(batch, seed, jnp.int32(step), 0.5, CODEBOOK)
        return {task: np.asarray(a["tokens"]) for task, a in out.items()}

    first = draw(0, 3)
    np.testing.assert_array_equal(first["t2i"], draw(0, 3)["t2i"])  # a resumed step: the same
    assert not np.array_equal(first["t2i"], draw(0, 4)["t2i"])  # the next step: other noise
    assert not np.array_equal(first["t2i"], draw(1, 3)["t2i"])  # another seed: other noise
    assert not np.array_equal(first["t2i"], first["caption"])  # each task its own draws
    jitted = jax.jit(lambda b, s: augment.corrupt_batch(b, 0, s, 0.5, CODEBOOK))
    np.testing.assert_array_equal(
        np.asarray(jitted(batch, jnp.int32(3))["t2i"]["tokens"]), first["t2i"]
    )


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_a_rate_outside_zero_to_one_is_refused(rate):
    from configs import stage1
    from mars_jax.train_lib import validate

    c = stage1.get_config("tiny")
    c.train.image_code_noise = rate
    errors = validate.config_errors(c, check_data=False)
    assert any("train.image_code_noise" in e for e in errors), errors
