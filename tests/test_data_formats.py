"""Sequence formats, data config and the synthetic iterator (no shards needed)."""

import numpy as np
import pytest
import row_reference

from mars_jax.data import pipeline
from mars_jax.data.config import default_data_config
from mars_jax.tokens import code_order, formats, vocab

TEXT = np.array([11, 12, 13])
CODES = np.array([[0, 1], [2, 8191]])


def _tok(codes):
    return list(vocab.code_to_token(np.asarray(codes).reshape(-1)))


def test_t2i_row_exact():
    r = row_reference.t2i_row(TEXT, CODES, text_len=5)
    P, IMG, E = vocab.PAD, vocab.IMAGE_START, vocab.IMAGE_END
    assert list(r["tokens"]) == [P, P, 11, 12, 13, IMG, *_tok(CODES), E]
    assert list(r["valid"]) == [False, False] + [True] * 9
    assert list(r["positions"]) == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert list(r["targets"]) == [P, P, 12, 13, IMG, *_tok(CODES), E, P]
    # Loss exactly where the target is a code or <end>.
    assert list(r["loss_mask"]) == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0]
    layout = formats.t2i_layout(5, (2, 2))
    assert layout == (("text", 5), ("vision", 6))
    formats.check_layout(row_reference.stack_rows([r], layout))


def test_unconditional_t2i_starts_with_image_at_position_zero():
    r = row_reference.t2i_row([], CODES, text_len=4)
    first = int(np.argmax(r["valid"]))
    assert r["tokens"][first] == vocab.IMAGE_START and r["positions"][first] == 0
    assert not r["valid"][:4].any()


def test_caption_row_exact():
    r = row_reference.caption_row(CODES, TEXT, text_len=6)
    P, IMG, E, EOT = vocab.PAD, vocab.IMAGE_START, vocab.IMAGE_END, vocab.ENDOFTEXT
    assert list(r["tokens"]) == [IMG, *_tok(CODES), E, 11, 12, 13, EOT, P, P]
    assert list(r["valid"]) == [True] * 10 + [False] * 2
    assert list(r["positions"]) == list(range(10)) + [0, 0]
    # <end> predicts the first text token; the last text token predicts <eot>.
    assert list(r["loss_mask"]) == [0] * 5 + [1, 1, 1, 1] + [0] * 3
    assert list(r["targets"][5:9]) == [11, 12, 13, EOT]
    formats.check_layout(row_reference.stack_rows([r], formats.caption_layout(6, (2, 2))))


def test_sr_row_loss_only_on_hires():
    lo = np.array([[5]])
    r = row_reference.sr_row(TEXT, lo, CODES, text_len=4)
    layout = formats.sr_layout(4, (1, 1), (2, 2))
    batch = row_reference.stack_rows([r], layout)
    formats.check_layout(batch)
    start = formats.sr_hires_start(4, (1, 1))
    assert r["tokens"][start] == vocab.IMAGE_START
    assert r["tokens"][start - 1] == vocab.LOWRES_END and r["tokens"][4] == vocab.LOWRES_START
    expected = np.zeros_like(r["loss_mask"])
    expected[start : start + 5] = 1  # <img> → code0 … code3 → <end>
    np.testing.assert_array_equal(r["loss_mask"], expected)


def test_sr_positions_follow_the_high_res_raster():
    """Every high-res code sits at a fixed rotary offset from its low-res parent and at -1 / -W
    from its left / upper neighbour, in any generation order; text positions count on."""
    lo_grid, hi_grid = (2, 3), (4, 6)
    order = code_order.hires_order(hi_grid, 4)  # region-interleaved, as stage III trains
    text = [7, 8, 9]
    r = row_reference.sr_row(text, np.zeros(lo_grid), np.zeros(hi_grid), text_len=5, hi_order=order)
    pos = r["positions"]
    assert list(pos[2:6]) == [0, 1, 2, 3]  # text, then <lo> (padding does not count)
    lo_pos = pos[6:12].reshape(lo_grid)
    hi_start = formats.sr_hires_start(5, lo_grid) + 1
    hi_pos = np.empty(24, np.int64)
    hi_pos[order] = pos[hi_start : hi_start + 24]  # back to raster
    hi_pos = hi_pos.reshape(hi_grid)
    ys, xs = np.mgrid[0:4, 0:6]
    to_parent = hi_pos - lo_pos[ys // 2, xs // 2]
    assert len(np.unique(to_parent)) == 4  # one offset per child slot (2 × 2)
    np.testing.assert_array_equal(np.diff(hi_pos, axis=1), 1)
    np.testing.assert_array_equal(np.diff(hi_pos, axis=0), 6)
    assert pos[hi_start - 1] < hi_pos.min() and pos[-1] == hi_pos.max() + 1  # <img>, <end>
    assert len(np.unique(pos[2:])) == len(pos) - 2  # no two tokens share a position
    with pytest.raises(ValueError, match="permutation"):
        formats.sr_image_positions(lo_grid, hi_grid, np.zeros(24))


def test_check_layout_rejects_wrong_modality():
    batch = row_reference.stack_rows(
        [row_reference.t2i_row(TEXT, CODES, 5)], formats.t2i_layout(5, (2, 2))
    )
    batch["tokens"][0, 7] = 42  # a text id inside the vision segment
    with pytest.raises(ValueError, match="is not vision but lies in the vision segment"):
        formats.check_layout(batch)
    with pytest.raises(ValueError, match="exceed the slot"):
        row_reference.t2i_row(np.arange(6), CODES, 5)


def test_task_batch_sizes():
    c = default_data_config(1)
    c.caption_ratio = 0.25
    assert pipeline.task_batch_sizes(c, 16) == {"t2i": 12, "caption": 4}
    c.task_batch_multiple = 8
    assert pipeline.task_batch_sizes(c, 16) == {"t2i": 8, "caption": 8}
    assert pipeline.task_batch_sizes(default_data_config(3), 4) == {"sr": 4}
    with pytest.raises(ValueError, match="stage"):
        default_data_config(4)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_synthetic_iterator_format_and_resume(stage):
    c = default_data_config(stage)
    c.text_len = 8
    c.grids = ((2, 2),) if stage == 1 else ((2, 2), (2, 3))
    c.hires_scale = 2
    c.caption_ratio = 0.5
    it = pipeline.make_synthetic_iterator(c, global_batch_size=8, process_count=2)
    next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    tasks = {1: {"t2i", "caption"}, 2: {"t2i"}, 3: {"sr"}}[stage]
    for batch in expected:
        assert set(batch) == tasks
        for task in batch.values():
            formats.check_layout(task)
            assert sum(task["tokens"].shape[0] for task in batch.values()) == 4
            assert task["loss_mask"].sum() > 0
    fresh = pipeline.make_synthetic_iterator(c, global_batch_size=8, process_count=2)
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        for name in want:
            for k in formats.ROW_KEYS:
                np.testing.assert_array_equal(got[name][k], want[name][k])
            assert got[name]["layout"] == want[name]["layout"]
    other = pipeline.make_synthetic_iterator(c, 8, process_index=1, process_count=2)
    b0 = pipeline.make_synthetic_iterator(c, 8, process_index=0, process_count=2)
    x, y = next(b0), next(other)
    name = sorted(x)[0]
    assert x[name]["layout"] == y[name]["layout"]  # same bucket on every process
    assert not np.array_equal(x[name]["tokens"], y[name]["tokens"])


def test_batch_builders_equal_stacked_rows():
    """The loop-free batch builders against the row-by-row reference, incl. empty/full texts."""
    rng = np.random.default_rng(0)
    T, grid, lo_grid = 6, (2, 3), (1, 2)
    texts = [rng.integers(0, 1000, n) for n in (0, 3, 6, 1)]
    codes = [rng.integers(0, 8192, grid) for _ in texts]
    lo = [rng.integers(0, 8192, lo_grid) for _ in texts]
    order = [5, 0, 4, 1, 3, 2]  # high-res codes in another order than raster
    cases = [
        (
            formats.t2i_batch(texts, codes, T),
            [row_reference.t2i_row(t, c, T) for t, c in zip(texts, codes, strict=True)],
            formats.t2i_layout(T, grid),
        ),
        (
            formats.caption_batch(codes, [t[:5] for t in texts], T),
            [row_reference.caption_row(c, t[:5], T) for t, c in zip(texts, codes, strict=True)],
            formats.caption_layout(T, grid),
        ),
        (
            formats.sr_batch(texts, lo, codes, T, hi_order=order),
            [
                row_reference.sr_row(t, x, c, T, order)
                for t, x, c in zip(texts, lo, codes, strict=True)
            ],
            formats.sr_layout(T, lo_grid, grid),
        ),
    ]
    for got, rows, layout in cases:
        want = row_reference.stack_rows(rows, layout)
        assert got["layout"] == want["layout"] == layout
        for k in formats.ROW_KEYS:
            assert got[k].dtype == want[k].dtype
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    with pytest.raises(ValueError, match="exceed the slot of 5"):
        formats.caption_batch(codes, texts, T)
