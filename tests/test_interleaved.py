"""Joint text and image generation: structure, and the cache agrees with a full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.model import mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import interleaved
from mars_jax.sampling.options import SamplingConfig
from mars_jax.tokens import vocab

CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32")
GRID = (2, 2)
CODEBOOK = 32
GREEDY_TEXT = SamplingConfig(temperature=0.0)
GREEDY_IMAGE = SamplingConfig(temperature=0.0, codebook_size=CODEBOOK)


@pytest.fixture(scope="module")
def weights():
    p = params.init_params(CFG, jax.random.key(1))
    return p["frozen"], p["trainable"]


def _with_img_column(trainable, bias):
    """Shift (or, with None, zero) the vision-head column of `<img>`."""
    head = trainable["vision_head"]
    col = vocab.IMAGE_START - vocab.TEXT_VOCAB_SIZE
    head = head.at[:, col].set(0.0) if bias is None else head.at[:, col].add(bias)
    return dict(trainable, vision_head=head)


def _flatten(prompt, segments):
    tokens = list(prompt)
    for seg in segments:
        if seg.kind == "text":
            tokens += seg.ids.tolist()
        else:
            tokens += [vocab.IMAGE_START, *vocab.code_to_token(seg.ids.reshape(-1)).tolist()]
            tokens.append(vocab.IMAGE_END)
    return np.asarray(tokens, np.int32)


def _check_against_full_forward(frozen, trainable, prompt, segments):
    """Every generated token is the greedy choice of a full (uncached) forward pass."""
    tokens = _flatten(prompt, segments)
    n = tokens.size
    logits = np.asarray(
        mars.forward_logits(
            frozen, trainable, tokens[None], np.arange(n)[None], np.ones((1, n), bool), None, CFG
        )[0]
    )
    allowed = interleaved.text_mode_mask()
    in_image, left = False, 0
    for t in range(len(prompt) - 1, n - 1):
        nxt = tokens[t + 1]
        if in_image and left == 0:
            assert nxt == vocab.IMAGE_END
            in_image = False
            continue
        if in_image:
            codes = logits[t, vocab.FIRST_IMAGE_CODE : vocab.FIRST_IMAGE_CODE + CODEBOOK]
            assert vocab.code_to_token(int(np.argmax(codes))) == nxt, f"position {t}"
            left -= 1
            continue
        assert int(np.argmax(np.where(allowed, logits[t], -np.inf))) == nxt, f"position {t}"
        if nxt == vocab.IMAGE_START:
            in_image, left = True, GRID[0] * GRID[1]


def test_image_opens_fills_exactly_and_closes(weights):
    frozen, trainable = weights
    boosted = _with_img_column(trainable, 50.0)
    prompt = [9707, 11, 1879]
    n = GRID[0] * GRID[1]
    segments = interleaved.generate_interleaved(
        frozen, boosted, CFG, prompt, GRID, GREEDY_TEXT, GREEDY_IMAGE, max_tokens=2 * (n + 2) + 1
    )
    kinds = [s.kind for s in segments]
    assert "image" in kinds  # the boost opens at least one image (here text, image, text)
    for seg in (s for s in segments if s.kind == "image"):
        assert seg.ids.shape == GRID and seg.ids.min() >= 0 and seg.ids.max() < CODEBOOK
    _check_against_full_forward(frozen, boosted, prompt, segments)


def test_text_continues_after_an_image_in_the_prompt(weights):
    frozen, trainable = weights
    quiet = _with_img_column(trainable, None)  # <img> logit 0 < the best text logit
    image = [vocab.IMAGE_START, *vocab.code_to_token(np.arange(4)).tolist(), vocab.IMAGE_END]
    prompt = [9707, 11, *image, 1879]
    segments = interleaved.generate_interleaved(
        frozen, quiet, CFG, prompt, GRID, GREEDY_TEXT, GREEDY_IMAGE, max_tokens=8
    )
    assert [s.kind for s in segments] == ["text"]
    assert (segments[0].ids < vocab.TEXT_VOCAB_SIZE).all()
    _check_against_full_forward(frozen, quiet, prompt, segments)


def test_empty_prompt_is_an_error(weights):
    frozen, trainable = weights
    with pytest.raises(ValueError, match="non-empty prompt"):
        interleaved.generate_interleaved(
            frozen, trainable, CFG, [], GRID, GREEDY_TEXT, GREEDY_IMAGE, max_tokens=4
        )


def test_text_mode_mask():
    mask = interleaved.text_mode_mask()
    assert mask[: vocab.TEXT_VOCAB_SIZE].all() and mask[vocab.IMAGE_START]
    assert not mask[vocab.FIRST_IMAGE_CODE] and not mask[vocab.IMAGE_END]
    assert jnp.asarray(mask).sum() == vocab.TEXT_VOCAB_SIZE + 1


def test_images_go_into_the_prompt_as_img_codes_end():
    codes = np.arange(6).reshape(2, 3)
    ids = interleaved.prompt_with_images([11, 12], [codes, codes + 1])
    block = [vocab.IMAGE_START, *vocab.code_to_token(np.arange(6)).tolist(), vocab.IMAGE_END]
    block2 = [vocab.IMAGE_START, *vocab.code_to_token(np.arange(1, 7)).tolist(), vocab.IMAGE_END]
    assert ids == [11, 12, *block, *block2]
