"""Blockwise attention == materialised attention (outputs and gradients), frozen text stream."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.model import attention, mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import layout as L
from mars_jax.tokens import vocab

CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32")
LAYOUTS = {
    "t2i": L.t2i(6, 9),
    "caption": L.caption(7, 9),
    "sr": L.super_resolution(5, 4, 16),
    "interleaved": L.make_layout(("text", 5), ("vision", 11), ("text", 6), ("vision", 10)),
    "mixed": None,
}


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 8 tokens, so every test segment spans several blocks (and ragged ones)."""
    monkeypatch.setattr(attention, "BLOCK_Q", 8)
    monkeypatch.setattr(attention, "BLOCK_K", 8)


def _random_blocks(rng, b, lq, lks, h, g, dh):
    q = rng.normal(size=(b, lq, h, dh)).astype(np.float32)
    kv = [
        (rng.normal(size=(b, n, g, dh)).astype(np.float32), rng.normal(size=(b, n, g, dh)))
        for n in lks
    ]
    kv = [(jnp.asarray(k), jnp.asarray(v, jnp.float32)) for k, v in kv]
    valid = [rng.random((b, n)) < 0.8 for n in lks]
    valid[-1][0, :5] = False  # left padding of the own segment: rows without any key
    valid[0][1] = False  # a whole invalid key block for one sequence
    return jnp.asarray(q), kv, [jnp.asarray(v) for v in valid]


@pytest.mark.parametrize("lks", [(21,), (13, 21), (8, 3, 21)])
def test_blockwise_equals_materialised_with_gradients(lks):
    rng = np.random.default_rng(0)
    q, kv, valid = _random_blocks(rng, 2, lks[-1], lks, h=4, g=2, dh=8)
    masks = attention.segment_masks(valid, q.shape[1])
    w = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def loss(fn, q, kv):
        return jnp.sum(fn(q, kv) * w)

    ref = lambda q, kv: attention.materialised(q, kv, masks)
    blk = lambda q, kv: attention.blockwise(q, kv, valid, block_q=8, block_k=5)
    # Compiled: the blockwise loops run op by op otherwise (~10 s for one case).
    np.testing.assert_allclose(jax.jit(blk)(q, kv), jax.jit(ref)(q, kv), rtol=0, atol=1e-5)
    g_ref = jax.jit(jax.grad(functools.partial(loss, ref), argnums=(0, 1)))(q, kv)
    g_blk = jax.jit(jax.grad(functools.partial(loss, blk), argnums=(0, 1)))(q, kv)
    for a, b in zip(jax.tree.leaves(g_blk), jax.tree.leaves(g_ref), strict=True):
        assert _rel(a, b) <= 1e-5


@functools.cache
def _params():
    p = params.init_params(CFG, jax.random.key(0))
    flat, unravel = jax.flatten_util.ravel_pytree(p["trainable"])
    trainable = unravel(flat + 0.05 * jax.random.normal(jax.random.key(1), flat.shape))
    return p["frozen"], trainable


def _tokens(layout, rng, b=2):
    """Random ids of each segment's modality; the first text segment left-padded by 2 in
    row 0 (the data's layout), the general path a random mix."""
    segs = mars.segments_of(layout, 40 if layout is None else L.length(layout))
    parts, valid = [], []
    for modality, start, stop in segs:
        text = rng.integers(0, 5000, (b, stop - start))
        vision = vocab.code_to_token(rng.integers(0, vocab.NUM_IMAGE_CODES, (b, stop - start)))
        if modality == mars.MIXED:
            parts.append(np.where(rng.random(text.shape) < 0.5, text, vision))
        else:
            parts.append(text if modality == L.TEXT else vision)
        v = np.ones((b, stop - start), bool)
        if start == 0:
            v[0, :2] = False
        valid.append(v)
    tokens, valid = np.concatenate(parts, 1), np.concatenate(valid, 1)
    positions = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    return tokens, positions, valid


def _hidden_loss(impl, layout, tokens, positions, valid, w):
    """``(trainable, frozen) -> (loss, hidden)``; the params are arguments, not captured
    constants (compiled into the program, they would double its compile time)."""
    cfg = CFG.replace(attention=impl)

    def f(trainable, frozen):
        h = mars.forward_hidden(frozen, trainable, tokens, positions, valid, layout, cfg)
        return jnp.sum(h * w), h

    return f


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_model_blockwise_equals_reference(name, small_blocks):
    layout = LAYOUTS[name]
    rng = np.random.default_rng(1)
    tokens, positions, valid = _tokens(layout, rng)
    w = rng.normal(size=tokens.shape + (CFG.width,)).astype(np.float32)
    frozen, trainable = _params()
    out = {}
    for impl in ("reference", "blockwise"):
        f = _hidden_loss(impl, layout, tokens, positions, valid, w)
        out[impl] = jax.jit(jax.value_and_grad(f, has_aux=True))(trainable, frozen)
    (_, h_ref), g_ref = out["reference"]
    (_, h_blk), g_blk = out["blockwise"]
    assert _rel(h_blk, h_ref) <= 1e-5
    for path, a in jax.tree_util.tree_flatten_with_path(g_blk)[0]:
        b = g_ref
        for key in path:
            b = b[key.key]
        if np.abs(np.asarray(b)).max() > 0:
            assert _rel(a, b) <= 1e-5, jax.tree_util.keystr(path)
        else:
            assert not np.any(np.asarray(a)), jax.tree_util.keystr(path)


def _traced_backward(layout, loss_of, monkeypatch):
    rng = np.random.default_rng(2)
    tokens, positions, valid = _tokens(layout, rng)
    w = rng.normal(size=tokens.shape + (CFG.width,)).astype(np.float32)
    traces = []
    monkeypatch.setattr(attention, "TRACE_BACKWARD", traces)
    f = _hidden_loss("blockwise", layout, tokens, positions, valid, w)
    frozen, trainable = _params()
    grads = jax.jit(jax.grad(lambda t, fr: loss_of(f(t, fr)[1], w)))(trainable, frozen)
    return set(traces), grads


def test_text_stream_of_t2i_gets_no_backward(monkeypatch, small_blocks):
    layout = LAYOUTS["t2i"]
    text = L.bounds(layout)[0][2]
    # Whole loss: the vision queries' backward over the (frozen) text keys computes the query
    # gradient only; the text queries over their own keys have no backward at all.
    traces, _ = _traced_backward(layout, lambda h, w: jnp.sum(h * w), monkeypatch)
    assert traces == {(True, False, False), (True, True, True)}
    # A function of the text stream alone does not depend on any trainable weight.
    _, grads = _traced_backward(
        layout, lambda h, w: jnp.sum(h[:, :text] * w[:, :text]), monkeypatch
    )
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads))


def test_caption_text_stream_is_differentiated(monkeypatch, small_blocks):
    """Captioning: the text follows the image, so its keys do need gradients."""
    traces, _ = _traced_backward(LAYOUTS["caption"], lambda h, w: jnp.sum(h * w), monkeypatch)
    assert traces == {(True, True, False), (True, True, True)}


def test_config_selects_implementation():
    assert attention.resolve("auto", "bfloat16") == (
        "cudnn" if jax.default_backend() == "gpu" else "blockwise"
    )
    assert attention.resolve("reference", "bfloat16") == "reference"
    with pytest.raises(ValueError, match="attention"):
        ModelConfig.tiny(attention="flash")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cached_equals_materialised(dtype):
    """The decoder's attention over its cache layouts (keys [B, KV, Dh, S], values
    [B, KV, S, Dh]) equals `materialised` over [B, S, KV, Dh], masked rows included."""
    b, q_len, h, g, dh, s = 3, 2, 4, 2, 8, 7
    ks = jax.random.split(jax.random.key(3), 4)
    q = jax.random.normal(ks[0], (b, q_len, h, dh)).astype(dtype)
    k = jax.random.normal(ks[1], (b, s, g, dh)).astype(dtype)
    v = jax.random.normal(ks[2], (b, s, g, dh)).astype(dtype)
    visible = jax.random.bernoulli(ks[3], 0.6, (b, q_len, s)).at[0, 1].set(False)
    want = attention.materialised(q, [(k, v)], [visible])
    got = attention.cached(
        q, jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3)), visible
    )
    tol = 1e-6 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(np.float32(got), np.float32(want), atol=tol, rtol=tol)
    assert not np.any(np.float32(got)[0, 1])  # a query without a visible key gets zeros
