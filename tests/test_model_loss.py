"""Chunked cross-entropy: equals the unchunked loss and a full-logits reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from mars_jax.model import heads, layers, loss, mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import layout as L
from mars_jax.tokens import vocab

CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32")
TEXT_T, CODES = 5, 9
T2I, CAPTION = L.t2i(TEXT_T, CODES), L.caption(TEXT_T, CODES)


@functools.cache
def _params():
    return jax.jit(params.init_params, static_argnums=0)(CFG, jax.random.key(0))


def _batch(rng, task, b=2):
    text = rng.integers(0, 5000, (b, TEXT_T))
    codes = vocab.code_to_token(rng.integers(0, vocab.NUM_IMAGE_CODES, (b, CODES)))
    col = lambda v: np.full((b, 1), v)
    image = np.concatenate([col(vocab.IMAGE_START), codes, col(vocab.IMAGE_END)], 1)
    valid_text = np.ones((b, TEXT_T), bool)
    if task == "t2i":
        valid_text[0, :2] = False  # left padding
        text[0, :2] = vocab.PAD
        tokens = np.concatenate([text, image], 1)
        valid = np.concatenate([valid_text, np.ones(image.shape, bool)], 1)
        loss_mask = np.zeros(tokens.shape, np.float32)
        loss_mask[:, TEXT_T:-1] = 1.0  # targets: codes and <end>
    else:
        text[:, -1] = vocab.ENDOFTEXT
        tokens = np.concatenate([image, text], 1)
        valid = np.ones(tokens.shape, bool)
        loss_mask = np.zeros(tokens.shape, np.float32)
        loss_mask[:, image.shape[1] - 1 : -1] = 1.0  # targets: text and <eot>
    targets = np.concatenate([tokens[:, 1:], col(vocab.PAD)], 1)
    positions = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    return {
        "tokens": tokens,
        "positions": positions,
        "valid": valid,
        "targets": targets,
        "loss_mask": loss_mask * valid,
    }


@functools.partial(jax.jit, static_argnums=(1,))
def _logits(p, layout, batch):
    return mars.forward_logits(
        p["frozen"],
        p["trainable"],
        batch["tokens"],
        batch["positions"],
        batch["valid"],
        layout,
        CFG,
    )


def _reference(p, batch, layout, vision_only=False):
    """Weighted NLL from the full `[B, L, 160136]` logits (numpy, float64).

    With `vision_only`, positions whose target is a vision id use the vision ids only.
    """
    lg = np.asarray(_logits(p, layout, batch), np.float64)
    if vision_only:
        vis_target = batch["targets"][..., None] >= vocab.TEXT_VOCAB_SIZE
        text_range = np.arange(vocab.VOCAB_SIZE) < vocab.TEXT_VOCAB_SIZE
        lg = np.where(vis_target & text_range, -np.inf, lg)
    m = lg.max(-1, keepdims=True)
    logp = lg - m - np.log(np.sum(np.exp(lg - m), -1, keepdims=True))
    nll = -np.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    return np.sum(nll * batch["loss_mask"]), np.sum(batch["loss_mask"])


@functools.partial(jax.jit, static_argnums=(2, 3))
def _task_loss(p, batch, layout, cfg):
    return loss.task_loss(p["frozen"], p["trainable"], batch, layout, cfg)[0]


@functools.partial(jax.jit, static_argnums=(3, 4))
def _value_and_grad(trainable, frozen, batch, layout, cfg):
    """The task loss and its gradient in the trainable params (both param trees are
    arguments: captured, they would be compiled in as constants)."""
    f = lambda tr: loss.task_loss(frozen, tr, batch, layout, cfg)[0]
    return jax.value_and_grad(f)(trainable)


def test_chunked_equals_unchunked_and_reference_with_gradients():
    p = _params()
    batch = _batch(np.random.default_rng(0), "t2i")

    # Chunks of 5 tokens do not divide the 2 x 16 tokens; remat on the chunked side.
    chunked_cfg = CFG.replace(loss_chunk_size=5, remat_policy="full")
    chunked = _value_and_grad(p["trainable"], p["frozen"], batch, T2I, chunked_cfg)
    whole_cfg = CFG.replace(loss_chunk_size=0)
    whole = _value_and_grad(p["trainable"], p["frozen"], batch, T2I, whole_cfg)
    ref_sum, ref_weight = _reference(p, batch, T2I)
    assert float(ref_weight) == 2 * (CODES + 1)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6)
    np.testing.assert_allclose(chunked[0], ref_sum, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(chunked[1]), jax.tree.leaves(whole[1]), strict=True):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


@pytest.mark.parametrize("task, layout", [("t2i", T2I), ("caption", CAPTION)])
def test_gradients_match_plain_autodiff_of_the_full_logits(task, layout):
    """The chunk loss's custom VJP (loss-free chunks skipped, logits recomputed) against
    `jax.grad` of a softmax over the whole `[B, L, 160136]` logits; chunks of 4 tokens leave
    some chunks without loss-bearing tokens (t2i: the caption; caption: the image)."""
    p = _params()
    batch = _batch(np.random.default_rng(1), task)
    cfg = CFG.replace(loss_chunk_size=4)

    def plain(trainable, frozen):
        lg = mars.forward_logits(
            frozen, trainable, batch["tokens"], batch["positions"], batch["valid"], layout, cfg
        )
        logp = jax.nn.log_softmax(lg, axis=-1)
        nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
        return jnp.sum(nll * batch["loss_mask"])

    chunked = lambda tr, frozen: loss.task_loss(frozen, tr, batch, layout, cfg)[0]
    got_value, got = jax.jit(jax.value_and_grad(chunked))(p["trainable"], p["frozen"])
    want_value, want = jax.jit(jax.value_and_grad(plain))(p["trainable"], p["frozen"])
    np.testing.assert_allclose(got_value, want_value, rtol=1e-5)
    assert float(jnp.abs(got["vision_head"]).max()) > 0  # the head itself gets a gradient
    flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
    flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
    assert flat_got.keys() == flat_want.keys()
    # Some leaves get only round-off (the caption's image queries): compare on the scale of
    # the largest gradient.
    scale = max(float(np.abs(b).max()) for b in flat_want.values())
    for key, a in flat_got.items():
        np.testing.assert_allclose(
            a, flat_want[key], rtol=1e-4, atol=1e-6 * scale, err_msg=str(key)
        )


def test_vision_only_logits_match_restricted_reference():
    p = _params()
    cfg = CFG.replace(image_logits="vision_only", loss_chunk_size=4)
    rng = np.random.default_rng(1)
    for task, layout in (("t2i", T2I), ("caption", CAPTION)):
        batch = _batch(rng, task)
        got = _task_loss(p, batch, layout, cfg)
        ref_sum, _ = _reference(p, batch, layout, vision_only=True)
        np.testing.assert_allclose(got, ref_sum, rtol=1e-5, err_msg=task)
    # forward_logits restricts the same positions: those whose next token is a vision id.
    lg = np.asarray(
        jax.jit(mars.forward_logits, static_argnums=(5, 6))(
            p["frozen"],
            p["trainable"],
            batch["tokens"],
            batch["positions"],
            batch["valid"],
            CAPTION,
            cfg,
        )
    )
    restricted = np.all(np.isneginf(lg[..., : vocab.TEXT_VOCAB_SIZE]), axis=-1)
    next_is_vision = np.append(vocab.is_vision(batch["tokens"][0, 1:]), False)  # last: text
    np.testing.assert_array_equal(restricted[0], next_is_vision)
    full = np.asarray(_logits(p, CAPTION, batch))
    np.testing.assert_allclose(
        lg[..., vocab.TEXT_VOCAB_SIZE :], full[..., vocab.TEXT_VOCAB_SIZE :], atol=1e-5
    )
    # The general path restricts by target id; it agrees with the static layout path.
    np.testing.assert_allclose(_task_loss(p, batch, None, cfg), got, rtol=1e-5)


def test_total_loss_sums_tokens_over_tasks():
    p = _params()
    rng = np.random.default_rng(2)
    batch = {"t2i": _batch(rng, "t2i"), "caption": _batch(rng, "caption")}
    layouts = (("t2i", T2I), ("caption", CAPTION))
    total, metrics = jax.jit(loss.total_loss, static_argnums=(3, 4))(
        p["frozen"], p["trainable"], batch, layouts, CFG
    )
    sums = {k: _reference(p, batch[k], dict(layouts)[k]) for k in batch}
    expected = sum(s for s, _ in sums.values()) / sum(w for _, w in sums.values())
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    assert set(metrics) == {
        "loss",
        "tokens",
        "t2i/loss",
        "t2i/tokens",
        "caption/loss",
        "caption/tokens",
        "loss_weight",
    }
    np.testing.assert_allclose(metrics["caption/tokens"], 2 * TEXT_T)
    np.testing.assert_allclose(metrics["t2i/loss"], sums["t2i"][0] / sums["t2i"][1], rtol=1e-5)


def test_codebook_size_computes_only_the_vqs_codes():
    """A 100-code VQ: same logits as the full head on its codes and the specials, mask value
    elsewhere, and the loss of the restricted softmax."""
    full_cfg = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32")
    small_cfg = full_cfg.replace(codebook_size=100)
    p = params.init_params(full_cfg, jax.random.key(0))
    h = jax.random.normal(jax.random.key(1), (6, full_cfg.width))
    full = np.asarray(heads.vision_logits(p["trainable"], h, full_cfg))
    small = np.asarray(heads.vision_logits(p["trainable"], h, small_cfg))
    codes = vocab.NUM_IMAGE_CODES
    np.testing.assert_allclose(small[:, :100], full[:, :100], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(small[:, codes:], full[:, codes:], rtol=1e-5, atol=1e-5)
    assert (small[:, 100:codes] == layers.MASK_VALUE).all()
    targets = vocab.TEXT_VOCAB_SIZE + np.array([0, 5, 99, codes, codes + 1, 42])
    ce = loss.token_cross_entropy(
        p["frozen"], p["trainable"], h, targets, loss.VISION_ONLY, small_cfg
    )
    kept = np.concatenate([full[:, :100], full[:, codes:]], axis=1)
    col = np.where(targets - vocab.TEXT_VOCAB_SIZE < 100, targets - vocab.TEXT_VOCAB_SIZE, 0)
    col = np.where(
        targets - vocab.TEXT_VOCAB_SIZE >= codes, targets - vocab.TEXT_VOCAB_SIZE - codes + 100, col
    )
    want = scipy.special.logsumexp(kept, axis=1) - kept[np.arange(6), col]
    np.testing.assert_allclose(ce, want, rtol=1e-5, atol=1e-5)
    outside = vocab.TEXT_VOCAB_SIZE + np.array([100, 150])  # codes this VQ does not have
    ce_out = loss.token_cross_entropy(
        p["frozen"], p["trainable"], h[:2], outside, loss.VISION_ONLY, small_cfg
    )
    assert (np.asarray(ce_out) > 1e29).all()  # the mask value: bad data shows
    with pytest.raises(ValueError, match="codebook_size"):
        ModelConfig.tiny(codebook_size=9000)


def test_tied_text_head_gives_the_full_heads_loss_and_gradients():
    """`text_head_ids`: a head whose other columns are one shared column (the demo LLM's)
    scores text from the distinct columns alone; loss and gradients equal the full head's,
    for targets inside and outside the ids. An untied column is found by its id."""
    rng = np.random.default_rng(3)
    ids = tuple(sorted(set(rng.integers(1, 5000, 40).tolist()) | {vocab.ENDOFTEXT}))
    tied_cfg = CFG.replace(text_head_ids=ids, loss_chunk_size=4)
    p = jax.jit(params.init_params, static_argnums=0)(tied_cfg, jax.random.key(0))  # drawn tied
    assert heads.tied_text_id(tied_cfg) == 0
    assert heads.untied_text_id(p["frozen"]["text_head"], tied_cfg) is None
    head = np.asarray(p["frozen"]["text_head"])
    np.testing.assert_array_equal(head[:, 7], head[:, 150_000])  # tied ids share a column
    assert not np.array_equal(head[:, ids[0]], head[:, 0])
    batch = _batch(rng, "caption")
    text = batch["tokens"][:, -TEXT_T:]
    text[:, : TEXT_T // 2] = rng.choice(ids, (2, TEXT_T // 2))  # half inside the ids
    batch["targets"] = np.concatenate([batch["tokens"][:, 1:], np.full((2, 1), vocab.PAD)], 1)

    def value_and_grad(cfg):
        f = lambda tr, frozen: loss.task_loss(frozen, tr, batch, CAPTION, cfg)[0]
        return jax.jit(jax.value_and_grad(f))(p["trainable"], p["frozen"])

    tied_value, tied_grads = value_and_grad(tied_cfg)
    full_value, full_grads = value_and_grad(tied_cfg.replace(text_head_ids=()))
    np.testing.assert_allclose(tied_value, full_value, rtol=1e-5)
    ref_sum, _ = _reference(p, batch, CAPTION)
    np.testing.assert_allclose(tied_value, ref_sum, rtol=1e-5)
    # Leaves that get only round-off (the image's queries): compare on the largest scale.
    # The full head's softmax sums 151,811 copies of the shared column in float32, and its
    # round-off depends on the CPU's vector width: up to 1.5e-5 of the scale on an AVX2
    # machine (the `<img>` embedding row), 1e-5 with AVX-512. A wrong tied gradient (the
    # shared column's count left out, say) is off by the gradient's own size.
    scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(full_grads))
    for a, b in zip(jax.tree.leaves(tied_grads), jax.tree.leaves(full_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5 * scale)
    untied = p["frozen"]["text_head"].at[:, 4321].add(0.01)
    assert heads.untied_text_id(untied, tied_cfg) == 4321
    with pytest.raises(ValueError, match="text_head_ids"):
        CFG.replace(text_head_ids=(5, 3))


@pytest.mark.parametrize("task, layout", [("caption", CAPTION), ("t2i", None)])
def test_unrolled_layers_give_the_rolled_scans_loss_and_gradients(task, layout):
    """`scan_unroll` (the demo's straight-line layers) is a compile choice, not a model
    change: the loss and every gradient match the rolled scan, on a static layout and on
    the general path. An unroll past the depth is the full unroll (one compile covers both:
    the scan clamps it to the depth)."""
    p = _params()
    batch = _batch(np.random.default_rng(3), task)

    rolled = _value_and_grad(p["trainable"], p["frozen"], batch, layout, CFG)
    cfg = CFG.replace(scan_unroll=CFG.num_layers + 3)
    unrolled = _value_and_grad(p["trainable"], p["frozen"], batch, layout, cfg)
    np.testing.assert_allclose(unrolled[0], rolled[0], rtol=1e-6)
    grads = zip(jax.tree.leaves(unrolled[1]), jax.tree.leaves(rolled[1]), strict=True)
    for a, b in grads:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))
    with pytest.raises(ValueError, match="scan_unroll"):
        CFG.replace(scan_unroll=0)
