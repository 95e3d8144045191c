"""The one decoder (`model/decoder.py`): cached greedy decoding, one token or several per
extend, equals greedy decoding by full forward recompute."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from mars_jax.model import decoder, mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import vocab

CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32")
TEXT_T, STEPS = 5, 7


@jax.jit
def _params():
    p = params.init_params(CFG, jax.random.key(0))
    flat, unravel = jax.flatten_util.ravel_pytree(p["trainable"])
    return p["frozen"], unravel(flat + 0.05 * jax.random.normal(jax.random.key(1), flat.shape))


def _greedy(logits_BxV, step):
    """Even steps pick among vision ids, odd steps among text ids (exercises both experts)."""
    if step % 2 == 0:
        return vocab.TEXT_VOCAB_SIZE + jnp.argmax(logits_BxV[:, vocab.TEXT_VOCAB_SIZE :], -1)
    return jnp.argmax(logits_BxV[:, : vocab.TEXT_VOCAB_SIZE], -1)


def test_cached_greedy_decoding_equals_full_recompute():
    frozen, trainable = _params()
    rng = np.random.default_rng(0)
    prompt = np.concatenate(
        [rng.integers(0, 5000, (2, TEXT_T)), np.full((2, 1), vocab.IMAGE_START)], 1
    )
    valid = np.ones(prompt.shape, bool)
    valid[1, :3] = False  # row 1 has a shorter caption, left-padded
    prompt[1, :3] = vocab.PAD
    total = prompt.shape[1] + STEPS

    # Cached decoding: the prompt's text and <img> parts, then one token per extend.
    weights = decoder.prepare(frozen, trainable, CFG, None, "float32")
    cache = decoder.init_cache(CFG, 2, total, "float32")
    positions = np.maximum(np.cumsum(valid, 1) - 1, 0)

    @jax.jit
    def logits_after(weights, cache, tokens, positions, valid, start):
        h, cache = decoder.extend(weights, cache, tokens, positions, valid, start, CFG)
        return decoder.all_logits(weights, h[:, -1], CFG), cache

    h, cache = jax.jit(functools.partial(decoder.prefill, cfg=CFG, text_len=TEXT_T))(
        weights, cache, prompt, positions, valid
    )
    logits = decoder.all_logits(weights, h[:, -1], CFG)
    position = valid.sum(1)
    cached_tokens, cached_logits = [], [logits]
    for i in range(STEPS):
        token = _greedy(logits, i)
        cached_tokens.append(token)
        if i + 1 < STEPS:
            logits, cache = logits_after(
                weights, cache, token[:, None], (position + i)[:, None],
                np.ones((2, 1), bool), prompt.shape[1] + i,
            )  # fmt: skip
            cached_logits.append(logits)

    # Full recompute at every step, on a fixed-length buffer (later slots are ignored).
    @jax.jit
    def full(frozen, trainable, tokens, valid):
        positions = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0)
        return mars.forward_logits(frozen, trainable, tokens, positions, valid, None, CFG)

    tokens = np.concatenate([prompt, np.zeros((2, STEPS), np.int64)], 1)
    full_valid = np.concatenate([valid, np.zeros((2, STEPS), bool)], 1)
    for i in range(STEPS):
        t = prompt.shape[1] + i
        ref = full(frozen, trainable, tokens, full_valid)[:, t - 1]
        np.testing.assert_allclose(cached_logits[i], ref, atol=1e-4, rtol=0, err_msg=f"step {i}")
        token = np.asarray(_greedy(ref, i))
        np.testing.assert_array_equal(cached_tokens[i], token)
        tokens[:, t], full_valid[:, t] = token, True
    # Several tokens in one extend (as the stage-III drafts are fed): the same last logits.
    cache = decoder.init_cache(CFG, 2, total, "float32")
    _, cache = decoder.prefill(weights, cache, prompt, positions, valid, CFG, TEXT_T)
    fed = np.stack(cached_tokens[:-1], 1)
    at = position[:, None] + np.arange(STEPS - 1)[None]
    many, _ = logits_after(weights, cache, fed, at, np.ones(fed.shape, bool), prompt.shape[1])
    np.testing.assert_allclose(many, cached_logits[-1], atol=1e-4, rtol=0)
    # Weights cut to a codebook: the same code logits.
    cut = decoder.prepare(frozen, trainable, CFG, 64, "float32")
    h = jnp.asarray(np.random.default_rng(1).normal(size=(3, CFG.width)), jnp.float32)
    full_codes = decoder.all_logits(weights, h, CFG)[:, vocab.FIRST_IMAGE_CODE :][:, :64]
    np.testing.assert_allclose(decoder.code_logits(cut, h, CFG), full_codes, atol=1e-5)
    generated = np.stack(cached_tokens, 1)
    assert vocab.is_vision(generated).any() and (~vocab.is_vision(generated)).any()


def test_cache_keys_values_match_the_training_forward():
    """`decoder.cache_keys_values` gives a prefilled cache's keys and values in the
    training forward's `return_kv` layout, and they equal it."""
    cfg = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32")
    p = params.init_params(cfg, jax.random.key(0))
    tokens = jnp.asarray([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]], jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(5), tokens.shape)
    valid = jnp.ones(tokens.shape, bool)
    weights = decoder.prepare(p["frozen"], p["trainable"], cfg, None, "float32")
    cache = decoder.init_cache(cfg, 2, 7, "float32")
    _, cache = decoder.prefill(weights, cache, tokens, positions, valid, cfg)
    keys, values = decoder.cache_keys_values(cache)
    _, (want_k, want_v) = mars.forward_segments(
        p["frozen"], p["trainable"], tokens, positions, valid, None, cfg, return_kv=True
    )
    assert keys.shape == (cfg.num_layers, 2, 7, cfg.num_kv_heads, cfg.head_dim)
    np.testing.assert_allclose(keys[:, :, :5], want_k, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values[:, :, :5], want_v, rtol=1e-5, atol=1e-5)


def test_a_start_slot_per_row_extends_each_row_as_alone():
    """`extend` with `start` `[R]`: each row writes and attends at its own slots, as the row
    extended alone with that scalar start (stage III's exact mode moves rows apart)."""
    frozen, trainable = _params()
    weights = decoder.prepare(frozen, trainable, CFG, None, "float32")
    rng = np.random.default_rng(1)
    prompt = np.concatenate(
        [rng.integers(0, 5000, (2, TEXT_T)), np.full((2, 1), vocab.IMAGE_START)], 1
    )
    p = prompt.shape[1]
    codes = lambda n: vocab.TEXT_VOCAB_SIZE + rng.integers(0, 64, (2, n))
    positions = np.broadcast_to(np.arange(p), prompt.shape)
    extend = jax.jit(functools.partial(decoder.extend, cfg=CFG))
    cache = decoder.init_cache(CFG, 2, p + 6, "float32")
    _, cache = extend(weights, cache, prompt, positions, np.ones(prompt.shape, bool), 0)
    first = codes(2)
    _, cache = extend(
        weights, cache, first, p + np.arange(2)[None].repeat(2, 0), np.ones((2, 2), bool), p
    )

    # Row 0 feeds two tokens at slot p again (its earlier two were rejected drafts), row 1 two
    # more after its first two.
    tokens, start = codes(2), np.array([p, p + 2])
    row_positions = start[:, None] + np.arange(2)[None]
    h, new_cache = extend(weights, cache, tokens, row_positions, np.ones((2, 2), bool), start)
    for r in range(2):
        alone = jax.tree.map(lambda x, r=r: x[r : r + 1], cache)
        h_r, cache_r = extend(
            weights, alone, tokens[r : r + 1], row_positions[r : r + 1], np.ones((1, 2), bool),
            int(start[r]),
        )  # fmt: skip
        np.testing.assert_allclose(h[r : r + 1], h_r, rtol=1e-5, atol=1e-5)
        for got, want in zip(jax.tree.leaves(new_cache), jax.tree.leaves(cache_r), strict=True):
            np.testing.assert_allclose(np.asarray(got)[r : r + 1], want, rtol=1e-5, atol=1e-5)
