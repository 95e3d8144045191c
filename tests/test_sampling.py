"""Sampler: KV-cache decoding vs full recompute, CFG, seeds, code-only image positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import recompute_reference
import row_reference

from mars_jax.model import decoder, mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import interleaved, options, t2i
from mars_jax.sampling.options import SamplingConfig
from mars_jax.tokens import formats, vocab

# With in-image position rows, so cached decoding is checked against the full forward pass with them.
CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32", image_pos_grid=(2, 3))
TEXT_LEN = 6
GRID = (2, 3)
CODEBOOK = 64


@pytest.fixture(scope="module")
def weights():
    p = params.init_params(CFG, jax.random.key(0))
    # Sharpen the vision head so greedy choices are well separated (no float ties).
    p["trainable"]["vision_head"] = p["trainable"]["vision_head"] * 8.0
    return p["frozen"], p["trainable"]


PROMPTS = [[9707, 1879, 11], [104169, 9370], []]  # English-ish, Chinese-ish, empty


def greedy_by_recompute(frozen, trainable, rows, num_codes, scale):
    """Reference: rerun the whole sequence for every code (no cache), same guidance."""
    tokens, positions, valid = (np.asarray(rows[k]) for k in ("tokens", "positions", "valid"))
    tail = np.zeros((tokens.shape[0], num_codes), tokens.dtype)
    tokens = np.concatenate([tokens, tail + vocab.PAD], axis=1)
    after = positions[:, -1:] + 1 + np.arange(num_codes, dtype=positions.dtype)
    positions = np.concatenate([positions, after], axis=1)
    valid = np.concatenate([valid, np.zeros(tail.shape, bool)], axis=1)
    batch = len(PROMPTS)

    def choose(logits):
        code = interleaved.code_logits(logits, CODEBOOK)
        if scale != 1.0:
            code = options.guide(code, batch, scale)
        pick = np.asarray(jnp.argmax(code, axis=-1))
        written = np.concatenate([pick, pick]) if scale != 1.0 else pick
        return pick[:batch], vocab.code_to_token(written)

    prompt_len = np.asarray(rows["tokens"]).shape[1]
    return recompute_reference.greedy_by_recompute(
        frozen, trainable, CFG, tokens, positions, valid, prompt_len, num_codes, choose
    )


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_kv_cache_greedy_equals_full_recompute(weights, scale):
    frozen, trainable = weights
    scfg = SamplingConfig(cfg_scale=scale, temperature=0.0, codebook_size=CODEBOOK)
    got = t2i.generate_codes(frozen, trainable, CFG, PROMPTS, TEXT_LEN, GRID, scfg, seed=0)
    rows = formats.t2i_prompt(PROMPTS, TEXT_LEN)
    if scale != 1.0:
        rows = formats.t2i_prompt(options.with_unconditional(PROMPTS), TEXT_LEN)
    want = greedy_by_recompute(frozen, trainable, rows, GRID[0] * GRID[1], scale)
    np.testing.assert_array_equal(got.reshape(len(PROMPTS), -1), want)


def test_cfg_scale_one_equals_conditional_sampling(weights):
    """Scale 1 draws exactly the conditional codes: the guidance formula returns the
    conditional logits, and the sampler then runs no unconditional rows at all."""
    frozen, trainable = weights
    logits = jax.random.normal(jax.random.key(0), (6, 5, CODEBOOK))
    np.testing.assert_array_equal(options.guide(logits, 3, 1.0), logits[:3])
    scfg = SamplingConfig(cfg_scale=1.0, temperature=1.0, codebook_size=CODEBOOK)
    weights_ = decoder.prepare(frozen, trainable, CFG, CODEBOOK, str(CFG.compute_dtype))
    rows = formats.t2i_prompt(PROMPTS, TEXT_LEN)
    cond_only = t2i.sample_codes(
        weights_, rows["tokens"], rows["positions"], rows["valid"],
        options.row_keys(3, options.prompt_rows(0, len(PROMPTS))),
        cfg=CFG, scfg=scfg, num_codes=6, text_len=TEXT_LEN,
    )  # fmt: skip
    got = t2i.generate_codes(frozen, trainable, CFG, PROMPTS, TEXT_LEN, GRID, scfg, seed=3)
    np.testing.assert_array_equal(np.asarray(cond_only), got.reshape(len(PROMPTS), -1))


def test_same_seed_same_codes_other_seed_differs(weights):
    frozen, trainable = weights
    scfg = SamplingConfig(cfg_scale=1.5, temperature=1.0, codebook_size=CODEBOOK)
    run = lambda seed: t2i.generate_codes(
        frozen, trainable, CFG, PROMPTS, TEXT_LEN, GRID, scfg, seed
    )
    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_prompts_codes_depend_on_its_row_not_on_the_batch(weights):
    """Each prompt alone, under its row id, draws the codes it draws in the whole batch;
    another row id (candidate 1) draws others."""
    frozen, trainable = weights
    scfg = SamplingConfig(cfg_scale=1.5, temperature=1.0, codebook_size=CODEBOOK)
    run = lambda prompts, rows: t2i.generate_codes(
        frozen, trainable, CFG, prompts, TEXT_LEN, GRID, scfg, 7, np.asarray(rows)
    )
    whole = run(PROMPTS, options.prompt_rows(0, len(PROMPTS)))
    for i, prompt in enumerate(PROMPTS):
        np.testing.assert_array_equal(run([prompt], [[i, 0]])[0], whole[i])
    assert not np.array_equal(run(PROMPTS[:1], [[0, 1]])[0], whole[0])


def test_no_text_token_inside_an_image(weights):
    """Even when the text head dominates every logit, only image codes come out."""
    frozen, trainable = weights
    loud = dict(frozen, text_head=frozen["text_head"] * 1e4)
    for temperature in (0.0, 1.0):
        scfg = SamplingConfig(
            cfg_scale=1.5, temperature=temperature, top_k=5, codebook_size=CODEBOOK
        )
        codes = t2i.generate_codes(loud, trainable, CFG, PROMPTS, TEXT_LEN, GRID, scfg, 0)
        assert codes.shape == (len(PROMPTS), *GRID)
        assert codes.min() >= 0 and codes.max() < CODEBOOK
    # The same logits, unrestricted, would have picked a text token.
    rows = formats.t2i_prompt(PROMPTS, TEXT_LEN)
    logits = mars.forward_logits(
        loud, trainable, rows["tokens"], rows["positions"], rows["valid"], None, CFG
    )[:, -1]
    assert (np.asarray(jnp.argmax(logits, -1)) < vocab.TEXT_VOCAB_SIZE).all()


def test_filter_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept_k = np.isfinite(np.asarray(options.filter_logits(logits, 2, 1.0))) & (
        np.asarray(options.filter_logits(logits, 2, 1.0)) > -1e30
    )
    np.testing.assert_array_equal(kept_k[0], [True, True, False, False])
    kept_p = np.asarray(options.filter_logits(logits, 0, 0.7)) > -1e30
    np.testing.assert_array_equal(kept_p[0], [True, True, False, False])
    kept_p = np.asarray(options.filter_logits(logits, 0, 0.9)) > -1e30
    np.testing.assert_array_equal(kept_p[0], [True, True, True, False])


def test_prompt_rows_format_matches_training_t2i_rows():
    """The sampler's prompt is the training row's prefix, up to and including <img>."""

    ids = [101, 102, 103]
    row = row_reference.t2i_row(ids, np.arange(6), TEXT_LEN)
    got = formats.t2i_prompt([ids], TEXT_LEN)
    for key in ("tokens", "positions", "valid"):
        np.testing.assert_array_equal(got[key][0], row[key][: TEXT_LEN + 1])
    uncond = formats.t2i_prompt([[]], TEXT_LEN)
    assert uncond["valid"][0].sum() == 1 and uncond["positions"][0, -1] == 0
