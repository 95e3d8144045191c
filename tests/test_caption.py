"""Captioning (image → text) on the one decoder equals greedy decoding by full recompute."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import recompute_reference

from mars_jax.model import params
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import caption, options
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
    """Reruns the whole sequence for every token (no cache)."""
    prompt = caption.prompt_tokens(codes)
    rows, prompt_len = prompt.shape
    tokens = np.concatenate([prompt, np.zeros((rows, steps), prompt.dtype)], axis=1)
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    valid = np.arange(tokens.shape[1]) < np.full((rows, 1), prompt_len)

    def choose(logits):
        pick = np.asarray(logits[:, : vocab.ENDOFTEXT + 1]).argmax(-1)
        return pick, pick

    return recompute_reference.greedy_by_recompute(
        frozen, trainable, CFG, tokens, positions, valid, prompt_len, steps, choose
    )


def test_greedy_caption_equals_full_recompute():
    frozen, trainable = _weights()
    codes = np.random.default_rng(0).integers(0, 64, (2, 2, 3))
    got = caption.caption_codes(frozen, trainable, CFG, codes, GREEDY, max_tokens=6)
    want = _greedy_by_recompute(frozen, trainable, codes, 6)
    for row, ref in zip(got, want.tolist(), strict=True):
        cut = ref.index(vocab.ENDOFTEXT) if vocab.ENDOFTEXT in ref else len(ref)
        assert row == ref[:cut]
    assert all(len(r) > 0 for r in got)


def test_an_images_caption_depends_on_its_row_not_on_the_batch():
    """Sampled captions: each image alone, under its row id, gets the caption it gets in
    the whole batch (the tied head's merged column included)."""
    cfg, frozen, trainable = _tied_model()
    codes = np.random.default_rng(1).integers(0, 64, (3, 2, 3))
    scfg = SamplingConfig(temperature=1.5)
    for tied in (False, True):
        run = lambda images, rows, tied=tied: caption.caption_codes(
            frozen, trainable, cfg, images, scfg, 8, seed=2, tied=tied, row_ids=np.asarray(rows)
        )
        whole = run(codes, options.prompt_rows(0, 3))
        assert len({tuple(c) for c in whole}) > 1
        for i in range(3):
            assert run(codes[i : i + 1], [[i, 0]]) == [whole[i]]


def test_copies_of_an_image_draw_what_its_repeated_rows_draw():
    """`copies`: each image read once, its cache copied; the same captions, row by row, as
    the image repeated in the batch under the same row ids."""
    cfg, frozen, trainable = _tied_model()
    codes = np.random.default_rng(4).integers(0, 64, (2, 2, 3))
    rows = options.prompt_rows(0, 2, 4)
    rows = rows[rows[:, 1] > 0]  # candidates 1..3 of images 0 and 1
    scfg = SamplingConfig(temperature=1.5)
    run = lambda images, copies: caption.caption_codes(
        frozen, trainable, cfg, images, scfg, 8, seed=5, row_ids=rows, copies=copies
    )
    copied = run(codes, 3)
    assert copied == run(np.repeat(codes, 3, axis=0), 1)
    assert len(copied) == 6 and len({tuple(c) for c in copied}) > 2


def test_caption_stops_at_endoftext_and_draws_no_special_token():
    frozen, trainable = _weights()
    # A text head whose only large column is <|endoftext|> after any text token...
    head = jnp.zeros_like(frozen["text_head"]).at[:, vocab.ENDOFTEXT + 1 :].set(1e3)
    loud = dict(frozen, text_head=head)
    codes = np.zeros((1, 2, 3), np.int64)
    out = caption.caption_codes(loud, trainable, CFG, codes, SamplingConfig(temperature=1.0))
    # ...would draw specials past <|endoftext|>: they are masked, so the ids stay in range.
    assert all(t <= vocab.ENDOFTEXT for t in out[0])


def _tied_model(shared_scale: float = 3.0):
    """A head tied outside a few distinct ids (as the demo LLM's), the tied column scaled
    (3: it is sometimes the best one; 0: its logit is 0)."""
    from mars_jax.model import heads
    from mars_jax.text.tokenizer import load_tokenizer

    ids = sorted(set(load_tokenizer().encode("a red circle is left of two blue squares")))
    cfg = CFG.replace(text_head_ids=tuple([*ids, vocab.ENDOFTEXT]))
    frozen, trainable = _weights()
    head = heads.tie_text_head(frozen["text_head"], cfg)
    shared = heads.tied_text_id(cfg)
    head = head.at[:, shared].set(head[:, shared] * shared_scale)
    head = heads.tie_text_head(head, cfg)
    return cfg, {**frozen, "text_head": head}, trainable


def test_tied_head_captions_equal_the_full_vocabulary_ones():
    """Greedy, token for token, up to the first tied id (identical head columns, whose
    full-vocabulary argmax float noise decides; the tied path takes the smallest)."""
    cfg, frozen, trainable = _tied_model(shared_scale=0.0)
    distinct = set(cfg.text_head_ids)
    codes = np.random.default_rng(3).integers(0, 64, (4, 2, 3))
    compared = 0
    for lang in ("any", "en"):
        fast = caption.caption_codes(frozen, trainable, cfg, codes, GREEDY, 8, lang=lang)
        full = caption.caption_codes(
            frozen, trainable, cfg, codes, GREEDY, 8, lang=lang, tied=False
        )
        for a, b in zip(fast, full, strict=True):
            cut = next((i for i, t in enumerate(b) if t not in distinct), len(b))
            assert a[:cut] == b[:cut]
            if cut < len(b):
                assert a[cut] not in distinct
            compared += cut
    assert compared >= 8


def test_tied_head_draws_from_the_full_softmax():
    """Column probabilities equal the 151,936-way softmax's (the merged column: the sum over
    the allowed tied ids), and a drawn merged column becomes one of those ids."""
    from mars_jax.model import decoder
    from mars_jax.text import languages

    cfg, frozen, trainable = _tied_model()
    weights = decoder.prepare(frozen, trainable, cfg, None, "float32")
    allowed = languages.allowed_text_ids("en")
    head = caption.tied_head(cfg, allowed)
    scfg = SamplingConfig(temperature=0.7)
    logits, pick = caption._tied_logits_and_pick(weights, cfg, scfg, head)
    h = jax.random.normal(jax.random.key(4), (3, cfg.width))
    p_cols = np.asarray(jax.nn.softmax(logits(h) / scfg.temperature, axis=-1))
    # The reference in float64: 151,936 float32 probabilities do not sum to 1 closely enough.
    full = np.asarray(h, np.float64) @ np.asarray(frozen["text_head"], np.float64)
    full = np.where(allowed, full / scfg.temperature, -np.inf)
    p_full = np.exp(full - full.max(-1, keepdims=True))
    p_full /= p_full.sum(-1, keepdims=True)
    n = len(head.ids) - 1
    np.testing.assert_allclose(p_cols[:, :n], p_full[:, head.ids[:n]], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(p_cols[:, n], p_full[:, head.tied_allowed].sum(-1), rtol=1e-4)
    assert p_cols[:, n].max() > 0.01  # the merged column matters in this check
    keys = options.row_keys(5, options.prompt_rows(0, 256))
    drawn = np.asarray(pick(jnp.full((256,), n), keys))
    assert set(drawn.tolist()) <= set(head.tied_allowed.tolist()) and len(set(drawn.tolist())) > 100
