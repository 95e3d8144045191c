"""Captioning (image → text) on the one decoder equals greedy decoding by full recompute."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from mars_jax.model import mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import caption
from mars_jax.sampling.options import SamplingConfig
from mars_jax.tokens import vocab

CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32", image_pos_grid=(2, 3))
GREEDY = SamplingConfig(temperature=0.0)


def _weights():
    p = params.init_params(CFG, jax.random.key(0))
    flat, unravel = jax.flatten_util.ravel_pytree(p["trainable"])
    trainable = unravel(flat + 0.05 * jax.random.normal(jax.random.key(1), flat.shape))
    return p["frozen"], trainable


def _greedy_by_recompute(frozen, trainable, codes, steps):
    tokens = caption.prompt_tokens(codes)
    out = []
    for _ in range(steps):
        positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
        valid = np.ones(tokens.shape, bool)
        logits = mars.forward_logits(frozen, trainable, tokens, positions, valid, None, CFG)
        text = np.asarray(logits[:, -1, : vocab.ENDOFTEXT + 1])
        pick = text.argmax(-1)
        out.append(pick)
        tokens = np.concatenate([tokens, pick[:, None].astype(np.int32)], axis=1)
    return np.stack(out, 1)


def test_greedy_caption_equals_full_recompute():
    frozen, trainable = _weights()
    codes = np.random.default_rng(0).integers(0, 64, (2, 2, 3))
    got = caption.caption_codes(frozen, trainable, CFG, codes, GREEDY, max_tokens=6)
    want = _greedy_by_recompute(frozen, trainable, codes, 6)
    for row, ref in zip(got, want.tolist(), strict=True):
        cut = ref.index(vocab.ENDOFTEXT) if vocab.ENDOFTEXT in ref else len(ref)
        assert row == ref[:cut]
    assert all(len(r) > 0 for r in got)


def test_caption_stops_at_endoftext_and_draws_no_special_token():
    frozen, trainable = _weights()
    # A text head whose only large column is <|endoftext|> after any text token...
    head = jnp.zeros_like(frozen["text_head"]).at[:, vocab.ENDOFTEXT + 1 :].set(1e3)
    loud = dict(frozen, text_head=head)
    codes = np.zeros((1, 2, 3), np.int64)
    out = caption.caption_codes(loud, trainable, CFG, codes, SamplingConfig(temperature=1.0))
    # ...would draw specials past <|endoftext|>: they are masked, so the ids stay in range.
    assert all(t <= vocab.ENDOFTEXT for t in out[0])
