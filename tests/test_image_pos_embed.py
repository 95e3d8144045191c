"""`ModelConfig.image_pos_embed`: learned rows for a code's place in its image."""

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax import vocab
from mars_jax.data import formats
from mars_jax.model import mars, nktp, params
from mars_jax.model.config import ModelConfig

CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32", image_pos_embed=12)


def test_offsets_are_the_place_in_the_image():
    t2i = formats.t2i_batch([np.array([5, 6]), np.array([], np.int64)], [np.zeros((2, 3))] * 2, 4)
    off = np.asarray(mars.image_offsets(t2i["tokens"], t2i["positions"], t2i["valid"])[0])
    np.testing.assert_array_equal(off[:, :4], -1)  # text before any <img>
    np.testing.assert_array_equal(off[:, 4:], [list(range(8))] * 2)  # <img> 0, codes 1..6, <end>
    order = nktp.hires_order((4, 4), 4)
    sr = formats.sr_batch([np.array([5])], [np.zeros((2, 2))], [np.zeros((4, 4))], 2, order)
    off = np.asarray(mars.image_offsets(sr["tokens"], sr["positions"], sr["valid"])[0])[0]
    np.testing.assert_array_equal(off[3:7], [1, 3, 9, 11])  # low-res codes: top-left children
    np.testing.assert_array_equal(off[9:25], 1 + order)  # high-res codes: 1 + raster index


def test_static_and_general_paths_agree_and_the_rows_matter():
    p = params.init_params(CFG, jax.random.key(0))
    frozen, trainable = p["frozen"], p["trainable"]
    assert trainable["image_pos_embed"].shape == (12, CFG.width)
    assert (
        "image_pos_embed"
        not in params.init_params(CFG.replace(image_pos_embed=0), jax.random.key(0))["trainable"]
    )
    b = formats.t2i_batch([np.array([7, 8, 9])], [np.arange(6).reshape(2, 3)], 4)
    args = (b["tokens"], b["positions"], b["valid"])
    static = mars.forward_logits(frozen, trainable, *args, b["layout"], CFG)
    general = mars.forward_logits(frozen, trainable, *args, None, CFG)
    vis = slice(vocab.TEXT_VOCAB_SIZE, None)
    np.testing.assert_allclose(static[:, 4:, vis], general[:, 4:, vis], rtol=1e-5, atol=1e-5)
    moved = {**trainable, "image_pos_embed": trainable["image_pos_embed"] + 1.0}
    hidden = lambda tr: mars.forward_hidden(frozen, tr, *args, b["layout"], CFG)
    h0, h1 = hidden(trainable), hidden(moved)
    np.testing.assert_array_equal(h0[:, :4], h1[:, :4])  # text: no rows, nothing changes
    assert float(jnp.abs(h0[:, 5:] - h1[:, 5:]).max()) > 1e-3  # codes: the rows matter
