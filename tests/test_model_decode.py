"""KV-cache decoding equals greedy decoding by full forward recompute."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from mars_jax.model import decode, mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import vocab

CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32")
TEXT_T, STEPS = 5, 7
PROMPT_LAYOUT = (("text", TEXT_T), ("vision", 1))  # left-padded text ▸ <img>


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

    # Cached decoding.
    prefill = jax.jit(functools.partial(decode.prefill, layout=PROMPT_LAYOUT, cfg=CFG))
    step_fn = jax.jit(functools.partial(decode.decode_step, cfg=CFG))
    cache = decode.init_cache(CFG, 2, total)
    logits, cache = prefill(
        frozen, trainable, cache, prompt, np.maximum(np.cumsum(valid, 1) - 1, 0), valid
    )
    position = valid.sum(1)
    cached_tokens, cached_logits = [], [logits]
    for i in range(STEPS):
        token = _greedy(logits, i)
        cached_tokens.append(token)
        if i + 1 < STEPS:
            prev_cache = cache
            logits, cache = step_fn(
                frozen, trainable, cache, token, position + i, prompt.shape[1] + i
            )
            cached_logits.append(logits)

    # Full recompute at every step, on a fixed-length buffer (later slots are ignored).
    @jax.jit
    def full(tokens, valid):
        positions = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0)
        return mars.forward_logits(frozen, trainable, tokens, positions, valid, None, CFG)

    tokens = np.concatenate([prompt, np.zeros((2, STEPS), np.int64)], 1)
    full_valid = np.concatenate([valid, np.zeros((2, STEPS), bool)], 1)
    for i in range(STEPS):
        t = prompt.shape[1] + i
        ref = full(tokens, full_valid)[:, t - 1]
        np.testing.assert_allclose(cached_logits[i], ref, atol=1e-4, rtol=0, err_msg=f"step {i}")
        token = np.asarray(_greedy(ref, i))
        np.testing.assert_array_equal(cached_tokens[i], token)
        tokens[:, t], full_valid[:, t] = token, True
    # vision_only: same vision logits, text range -inf.
    last = cached_tokens[-2]
    vis, _ = jax.jit(functools.partial(decode.decode_step, cfg=CFG, vision_only=True))(
        frozen, trainable, prev_cache, last, position + STEPS - 2, prompt.shape[1] + STEPS - 2
    )
    assert np.all(np.isneginf(vis[:, : vocab.TEXT_VOCAB_SIZE]))
    np.testing.assert_allclose(
        vis[:, vocab.TEXT_VOCAB_SIZE :], cached_logits[-1][:, vocab.TEXT_VOCAB_SIZE :], atol=1e-5
    )
    generated = np.stack(cached_tokens, 1)
    assert vocab.is_vision(generated).any() and (~vocab.is_vision(generated)).any()
