"""Training from a converted Qwen checkpoint: the path a real run takes (not a random base)."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest
from test_convert import _qwen2_arrays, _write
from test_train_loop import tiny_config

from mars_jax import convert
from mars_jax.train_lib import base as base_lib
from mars_jax.train_lib import loop


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    arrays, config = _qwen2_arrays(np.random.default_rng(5), layers=2, d=64, heads=4, kv=2, f=128)
    _write(root / "hf", arrays, config)
    convert.convert(str(root / "hf"), str(root / "base"), "bfloat16")
    return str(root / "base")


def test_trains_on_converted_base_and_keeps_it_bit_identical(base_dir, tmp_path):
    c = tiny_config()
    c.base.checkpoint = base_dir
    c.train.num_steps = 2
    summary = loop.run(c, str(tmp_path / "run"))
    assert summary["step"] == 2
    loaded = base_lib.read_frozen(base_dir)
    after = jax.device_get(summary["frozen"])
    want = jax.tree.map(lambda w, g: np.asarray(w).astype(np.asarray(g).dtype), loaded, after)
    chex.assert_trees_all_equal(after, want)  # bit-identical, leaf by leaf


def test_model_config_that_does_not_match_the_base_is_refused(base_dir, tmp_path):
    c = tiny_config()
    c.base.checkpoint = base_dir
    c.model.mlp_dim = 96  # the converted base has 128
    with pytest.raises(ValueError, match="mlp_dim|shape"):
        loop.run(c, str(tmp_path / "run"))
