"""The reading probe (train_lib/reading.py): mismatched conditions are well-formed rows, and
the probe's loss over micro-batches is the full batch's loss."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import stage1
from mars_jax.model import loss as loss_lib
from mars_jax.tokens import formats
from mars_jax.train_lib import loop, reading

TEXT_LEN = 8
GRID = (2, 3)


def _texts_and_codes(rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    # Captions of different lengths: the image positions depend on them.
    texts = [rng.integers(0, 1000, size=int(n)) for n in rng.integers(1, TEXT_LEN - 1, rows)]
    codes = [rng.integers(0, 512, size=GRID) for _ in range(rows)]
    return texts, codes


def _assert_batches_equal(a: dict, b: dict):
    for key in formats.ROW_KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_mismatched_t2i_rows_are_the_batch_built_from_the_previous_rows_captions():
    texts, codes = _texts_and_codes(5)
    batch = formats.t2i_batch(texts, codes, TEXT_LEN)
    rolled_texts = [texts[(i - 1) % 5] for i in range(5)]
    expected = formats.t2i_batch(rolled_texts, codes, TEXT_LEN)
    _assert_batches_equal(reading.mismatched_rows(batch, batch["layout"]), expected)


def test_mismatched_caption_rows_are_the_batch_built_from_the_previous_rows_images():
    texts, codes = _texts_and_codes(4, seed=1)
    batch = formats.caption_batch(codes, texts, TEXT_LEN)
    rolled_codes = [codes[(i - 1) % 4] for i in range(4)]
    expected = formats.caption_batch(rolled_codes, texts, TEXT_LEN)
    _assert_batches_equal(reading.mismatched_rows(batch, batch["layout"]), expected)


def test_one_row_cannot_be_mismatched():
    texts, codes = _texts_and_codes(1)
    batch = formats.t2i_batch(texts, codes, TEXT_LEN)
    with pytest.raises(ValueError, match="at least 2 rows"):
        reading.mismatched_rows(batch, batch["layout"])
    assert reading.probed_tasks({"t2i": batch}) == []


def test_gap_is_mismatched_minus_the_steps_loss():
    gaps = reading.gaps({"t2i/loss_mismatched": 2.5, "sr/loss_mismatched": 1.0}, {"t2i/loss": 2.0})
    assert gaps == {"t2i/reading_gap": 0.5}


def test_probe_over_micro_batches_equals_the_whole_batch():
    """Stage I (t2i and caption rows) on one device: the probe with 2 micro-batches gives
    the per-task token means of one pass over the batch."""
    config = stage1.get_config("tiny")
    config.train.global_batch = 8
    config.data.caption_ratio = 0.5
    setup = loop.prepare(config, jax.devices()[:1])
    frozen, _ = loop.load_frozen(setup)
    trainable = loop.initial_trainable(setup, frozen)
    arrays, layouts = loop.split_layouts(next(loop.make_iterator(setup.config)))
    tasks = tuple(reading.probed_tasks(arrays))
    assert tasks == ("t2i", "caption")
    rolled = {t: reading.mismatched_rows(arrays[t], layouts[t]) for t in tasks}
    loss_fn = lambda f, t, b: loss_lib.total_loss(f, t, b, layouts, setup.model_cfg)
    whole = reading.make_mismatched_loss(loss_fn, tasks)(frozen, trainable, rolled)
    micro = reading.make_mismatched_loss(loss_fn, tasks, grad_accum=2)(frozen, trainable, rolled)
    _, direct = loss_fn(frozen, trainable, rolled)
    for t in tasks:
        np.testing.assert_allclose(whole[f"{t}/loss_mismatched"], direct[f"{t}/loss"], rtol=1e-6)
        np.testing.assert_allclose(micro[f"{t}/loss_mismatched"], direct[f"{t}/loss"], rtol=1e-4)
