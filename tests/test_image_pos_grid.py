"""`ModelConfig.image_pos_grid`: learned row and column embeddings for a code's place."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.model import mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import code_order, formats, vocab

CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32", image_pos_grid=(2, 3))


def test_offsets_are_the_place_in_the_image():
    t2i = formats.t2i_batch([np.array([5, 6]), np.array([], np.int64)], [np.zeros((2, 3))] * 2, 4)
    off = np.asarray(mars.image_offsets(t2i["tokens"], t2i["positions"], t2i["valid"])[0])
    np.testing.assert_array_equal(off[:, :4], -1)  # text before any <img>
    np.testing.assert_array_equal(off[:, 4:], [list(range(8))] * 2)  # <img> 0, codes 1..6, <end>
    order = code_order.hires_order((4, 4), 4)
    sr = formats.sr_batch([np.array([5])], [np.zeros((2, 2))], [np.zeros((4, 4))], 2, order)
    off = np.asarray(mars.image_offsets(sr["tokens"], sr["positions"], sr["valid"])[0])[0]
    np.testing.assert_array_equal(off[3:7], [1, 3, 9, 11])  # low-res codes: top-left children
    np.testing.assert_array_equal(off[9:25], 1 + order)  # high-res codes: 1 + raster index


def test_each_code_gets_its_row_plus_its_column():
    table = params.image_pos_init(CFG, jax.random.key(1))["image_pos_embed"]
    assert table["row"].shape == (3, CFG.width) and table["col"].shape == (3, CFG.width)
    b = formats.t2i_batch([np.array([7])], [np.arange(6).reshape(2, 3)], 2)
    offsets, _ = mars.image_offsets(b["tokens"], b["positions"], b["valid"])
    x = jnp.zeros((1, b["tokens"].shape[1], CFG.width))
    got = np.asarray(
        mars.add_image_positions(x, {"image_pos_embed": table}, b["tokens"], offsets, CFG)
    )[0]
    row, col = np.asarray(table["row"]), np.asarray(table["col"])
    want = np.zeros_like(got)  # text and <img>: nothing
    for y in range(2):
        for x_ in range(3):
            want[2 + 1 + 3 * y + x_] = row[y] + col[x_]
    want[-1] = row[2] + col[0]  # <end>: the row below the image
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_static_and_general_paths_agree_and_the_table_matters():
    p = params.init_params(CFG, jax.random.key(0))
    frozen, trainable = p["frozen"], p["trainable"]
    off = CFG.replace(image_pos_grid=(0, 0))
    assert "image_pos_embed" not in params.init_params(off, jax.random.key(0))["trainable"]
    b = formats.t2i_batch([np.array([7, 8, 9])], [np.arange(6).reshape(2, 3)], 4)
    args = (b["tokens"], b["positions"], b["valid"])
    static = mars.forward_logits(frozen, trainable, *args, b["layout"], CFG)
    general = mars.forward_logits(frozen, trainable, *args, None, CFG)
    vis = slice(vocab.TEXT_VOCAB_SIZE, None)
    np.testing.assert_allclose(static[:, 4:, vis], general[:, 4:, vis], rtol=1e-5, atol=1e-5)
    moved = {
        **trainable,
        "image_pos_embed": jax.tree.map(lambda t: t + 1.0, trainable["image_pos_embed"]),
    }
    hidden = lambda tr: mars.forward_hidden(frozen, tr, *args, b["layout"], CFG)
    h0, h1 = hidden(trainable), hidden(moved)
    np.testing.assert_array_equal(h0[:, :4], h1[:, :4])  # text: no rows, nothing changes
    assert float(jnp.abs(h0[:, 5:] - h1[:, 5:]).max()) > 1e-3  # codes: the table matters


@pytest.mark.parametrize("grid", [(0, 3), (2, -1), (1, 2, 3)])
def test_bad_grid_is_a_config_error(grid):
    with pytest.raises(ValueError, match="image_pos_grid"):
        CFG.replace(image_pos_grid=grid)


def test_images_of_another_width_are_refused():
    CFG.check_image_grid((2, 3), "here")
    CFG.check_image_grid((1, 3), "here")
    with pytest.raises(ValueError, match=r"shards: a 2x4 code grid .*image_pos_grid=\(2, 3\)"):
        CFG.check_image_grid((2, 4), "shards")
    with pytest.raises(ValueError, match="3x3"):
        CFG.check_image_grid((3, 3), "shards")
