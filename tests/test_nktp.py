"""Next-K heads: code order, loss masks at image boundaries, K = 1 equals next-token loss."""

import functools

import jax
import numpy as np
import pytest

from mars_jax.model import heads, loss, mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import code_order, formats, vocab

CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32", nktp_k=3)
TEXT_T, LO, HI = 4, (2, 2), (2, 3)


@functools.cache
def _params():
    @jax.jit
    def init(key):
        k_params, k_heads, k_down = jax.random.split(key, 3)
        p = params.init_params(CFG.replace(nktp_k=1), k_params)  # no heads yet
        trainable = heads.extend_trainable(CFG, p["trainable"], k_heads)
        # Non-zero `down`, so heads 2..K differ from head 1.
        adapters = dict(trainable[heads.HEADS])
        adapters["down"] = 0.05 * jax.random.normal(k_down, adapters["down"].shape)
        return p["frozen"], p["trainable"], {**trainable, heads.HEADS: adapters}

    return init(jax.random.key(0))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    texts = [rng.integers(0, 5000, 3), rng.integers(0, 5000, 0)]  # second: caption dropped
    lo = [rng.integers(0, 64, LO) for _ in texts]
    hi = [code_order.to_sequence_order(rng.integers(0, 64, HI), CFG.nktp_k) for _ in texts]
    batch = formats.sr_batch(texts, lo, hi, TEXT_T, hi_order=code_order.hires_order(HI, CFG.nktp_k))
    return batch, batch.pop("layout")


def test_region_interleaved_order():
    order = code_order.hires_order((4, 4), 4)
    np.testing.assert_array_equal(order[:4], [0, 2, 8, 10])  # top-left code of each quadrant
    np.testing.assert_array_equal(order[4:8], [1, 3, 9, 11])
    assert sorted(order) == list(range(16))
    np.testing.assert_array_equal(code_order.hires_order((3, 5), 1), np.arange(15))
    assert code_order.region_grid((4, 8), 2) == (1, 2)  # halves of a wide grid are left / right
    codes = np.random.default_rng(0).integers(0, 100, (2, 4, 6))
    seq = code_order.to_sequence_order(codes, 4)
    assert seq.shape == codes.shape
    np.testing.assert_array_equal(code_order.to_raster(seq, (4, 6), 4), codes)
    np.testing.assert_array_equal(code_order.to_raster(seq.reshape(2, -1), (4, 6), 4), codes)
    with pytest.raises(ValueError, match="nktp_k=4"):
        code_order.hires_order((3, 3), 4)


def test_params_axes_and_init():
    frozen, plain, trainable = _params()
    assert heads.extend_trainable(CFG.replace(nktp_k=1), plain, jax.random.key(0)) is plain
    assert heads.logical_axes(CFG.replace(nktp_k=1)) == {}
    shapes = heads.head_shapes(CFG)
    axes = heads.logical_axes(CFG)
    assert jax.tree.structure(shapes[heads.HEADS], is_leaf=lambda x: isinstance(x, tuple)) == (
        jax.tree.structure(axes[heads.HEADS], is_leaf=lambda x: isinstance(x, tuple))
    )
    assert all(len(axes[heads.HEADS][k]) == len(shapes[heads.HEADS][k]) for k in heads.ADAPTER_KEYS)
    # A fresh head (zero `down`) is a copy of head 1.
    fresh = heads.extend_trainable(CFG, plain, jax.random.key(3))
    h = jax.random.normal(jax.random.key(4), (5, CFG.width))
    logits = heads.all_head_vision_logits(fresh, h, 3, CFG)
    np.testing.assert_array_equal(logits[:, 1], logits[:, 0])
    with pytest.raises(KeyError, match="nktp_heads"):
        heads.check_heads(CFG, plain)


def test_init_params_includes_the_heads_nktp_k_asks_for():
    p = jax.eval_shape(lambda key: params.init_params(CFG, key), jax.random.key(0))
    heads.check_heads(CFG, p["trainable"])
    want = heads.head_shapes(CFG)[heads.HEADS]
    assert {k: v.shape for k, v in p["trainable"][heads.HEADS].items()} == want
    axes = params.logical_axes(CFG)["trainable"]
    assert axes[heads.HEADS] == heads.logical_axes(CFG)[heads.HEADS]


def test_window_masks_at_image_boundaries():
    batch, layout = _batch()
    tokens = batch["tokens"]
    start = formats.sr_hires_start(TEXT_T, LO)  # <img>
    end = tokens.shape[1] - 1  # <end>
    assert (tokens[:, start] == vocab.IMAGE_START).all() and (
        tokens[:, end] == vocab.IMAGE_END
    ).all()
    for k in range(1, 4):
        w = np.asarray(loss.window_weights(batch["loss_mask"] * batch["valid"], k))
        t = np.asarray(loss.window_targets(batch["targets"], k))
        for pos in range(tokens.shape[1]):
            # Head k at pos predicts tokens[pos + k]: counted iff pos + 1 … pos + k are all
            # high-res codes or <end> of this image.
            inside = pos >= start and pos + k <= end
            np.testing.assert_array_equal(w[:, pos], float(inside), err_msg=f"k={k} pos={pos}")
            if inside:
                np.testing.assert_array_equal(t[:, pos], tokens[:, pos + k])
    # First and last counted positions of the deepest head.
    w3 = np.asarray(loss.window_weights(batch["loss_mask"], 3))[0]
    assert w3[start] == 1 and w3[start - 1] == 0 and w3[end - 3] == 1 and w3[end - 2] == 0


def test_k1_loss_equals_next_token_loss():
    frozen, plain, trainable = _params()
    batch, layout = _batch(1)

    @jax.jit
    def losses(frozen, plain, trainable, batch):
        out = []
        for image_logits in ("full", "vision_only"):
            cfg1 = CFG.replace(nktp_k=1, image_logits=image_logits)
            cfgk = CFG.replace(image_logits=image_logits)
            out.append(loss.task_loss(frozen, plain, batch, layout, cfg1)[:2])
            out.append(loss.sr_loss(frozen, plain, batch, layout, cfg1)[:2])
            # A K-head model asked for k=1: head 1 alone, the same numbers.
            out.append(loss.sr_loss(frozen, trainable, batch, layout, cfgk, k=1)[:2])
        return out

    out = [tuple(float(x) for x in pair) for pair in losses(frozen, plain, trainable, batch)]
    for i in (0, 3):
        assert out[i] == out[i + 1] == out[i + 2], out
    assert out[0] != out[3]  # the two softmax ranges differ: the comparison can fail


def _np_swiglu(h, gate, up, down):
    g, u = h @ gate, h @ up
    return (g / (1.0 + np.exp(-g)) * u) @ down


def test_head_losses_against_reference():
    frozen, _, trainable = _params()
    batch, layout = _batch(2)

    @jax.jit
    def run(frozen, trainable, batch):
        fn = lambda tr: loss.sr_loss(frozen, tr, batch, layout, CFG)
        (sum_loss, (sum_weight, metrics)), grads = jax.value_and_grad(
            lambda tr: (lambda out: (out[0], out[1:]))(fn(tr)), has_aux=True
        )(trainable)
        h = mars.forward_hidden(
            frozen, trainable, batch["tokens"], batch["positions"], batch["valid"], layout, CFG
        )
        return sum_loss, sum_weight, metrics, grads, h

    sum_loss, sum_weight, metrics, grads, h = run(frozen, trainable, batch)
    # Reference in numpy: each head's adapter and vision softmax, explicit windows.
    tokens, start = batch["tokens"], formats.sr_hires_start(TEXT_T, LO)
    end = tokens.shape[1] - 1
    h = np.asarray(h, np.float64)
    adapters = jax.tree.map(lambda x: np.asarray(x, np.float64), trainable[heads.HEADS])
    head_w = np.asarray(trainable["vision_head"], np.float64)
    total = float(metrics["ntp_loss"]) * float(sum_weight)
    for k in (2, 3):
        a = {name: adapters[name][k - 2] for name in heads.ADAPTER_KEYS}
        lv = (h + _np_swiglu(h, a["gate"], a["up"], a["down"])) @ head_w
        ce = 0.0
        for b in range(tokens.shape[0]):
            for pos in range(start, end - k + 1):
                row = lv[b, pos]
                target = tokens[b, pos + k] - vocab.TEXT_VOCAB_SIZE
                ce += np.log(np.sum(np.exp(row - row.max()))) + row.max() - row[target]
        n = tokens.shape[0] * (end - k + 1 - start)
        np.testing.assert_allclose(metrics[f"head{k}_loss"], ce / n, rtol=1e-4)
        total += ce
    np.testing.assert_allclose(sum_loss, total, rtol=1e-4)
    assert float(sum_weight) == float(np.sum(batch["loss_mask"]))
    # Every head's adapter is trained.
    down = np.asarray(grads[heads.HEADS]["down"])
    assert np.abs(down).reshape(2, -1).max(axis=1).min() > 0


def test_all_head_logits_equal_each_head_through_head_hidden():
    _, _, trainable = _params()
    h = jax.random.normal(jax.random.key(5), (6, CFG.width))
    head = trainable["vision_head"][:, :40]
    for num in (1, 2, 3):
        logits = heads.all_head_vision_logits(trainable, h, num, CFG, 40)
        assert logits.shape == (6, num, 40)
        for k in range(1, num + 1):
            want = heads.head_hidden(trainable, h, k, CFG) @ head
            np.testing.assert_allclose(logits[:, k - 1], want, rtol=1e-5, atol=1e-5)
