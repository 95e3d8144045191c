"""Training from a converted Qwen checkpoint: the path a real run takes (not a random base)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_convert import _qwen2_arrays, _write
from test_train_loop import tiny_config

from mars_jax import convert
from mars_jax.model import mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import vocab
from mars_jax.train_lib import base as base_lib
from mars_jax.train_lib import loop


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    arrays, config = _qwen2_arrays(np.random.default_rng(5), layers=2, d=64, heads=4, kv=2, f=128)
    _write(root / "hf", arrays, config)
    convert.convert(str(root / "hf"), str(root / "base"), "bfloat16")
    return str(root / "base")


def test_trains_on_converted_base_and_keeps_its_text_logits(base_dir, tmp_path):
    """After training, text-only input gets the converted base's own text logits (the LLM
    stayed frozen), and the trainer's vision init used the base's real text rows."""
    c = tiny_config()
    c.base.checkpoint = base_dir
    c.train.num_steps = 2
    summary = loop.run(c, str(tmp_path / "run"))
    assert summary["step"] == 2
    cfg = ModelConfig.from_dict(c.model).replace(image_logits="full")
    base = jax.tree.map(lambda x: x.astype(jnp.bfloat16), base_lib.read_frozen(base_dir))
    rows = base_lib.read_info(base_dir)["text_rows"]
    fresh = params.init_trainable_from_frozen(cfg, base, jax.random.key(0), num_text_rows=rows)
    ids = np.random.default_rng(0).integers(0, rows, (2, 9))
    positions, valid = np.broadcast_to(np.arange(9), ids.shape), np.ones(ids.shape, bool)

    @jax.jit  # one program for both calls (eager op-by-op runs may round differently)
    def text_logits(frozen, trainable):
        logits = mars.forward_logits(frozen, trainable, ids, positions, valid, None, cfg)
        return logits[..., : vocab.TEXT_VOCAB_SIZE]

    # On one device, like the base, so both calls run the same program.
    trained, frozen = jax.device_get((summary["state"]["trainable"], summary["frozen"]))
    np.testing.assert_array_equal(text_logits(frozen, trained), text_logits(base, fresh))
    setup = loop.prepare(c)
    with jax.set_mesh(setup.mesh):
        initial = loop.initial_trainable(setup, loop.load_frozen(setup)[0])
    mean_row = np.mean(np.asarray(base["embed"][:rows], np.float32), axis=0)
    np.testing.assert_allclose(np.asarray(initial["vision_embed"][3]), mean_row, atol=1e-2)


def test_model_config_that_does_not_match_the_base_is_refused(base_dir, tmp_path):
    c = tiny_config()
    c.base.checkpoint = base_dir
    c.model.mlp_dim = 96  # the converted base has 128
    with pytest.raises(ValueError, match="mlp_dim|shape"):
        loop.run(c, str(tmp_path / "run"))
