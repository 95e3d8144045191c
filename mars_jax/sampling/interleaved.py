"""Joint text and image generation (paper §4.6): write text, open an image, fill it, go on.

One sequence, one KV cache, decoded token by token with a state machine:

- text mode: sample among text ids and `<img>` (image codes and other specials are masked);
  `<|endoftext|>` ends the sequence;
- `<img>` switches to image mode: exactly `h*w` codes are sampled from the code range
  (vision head only), then `<end>` is forced and decoding returns to text mode.

The step is one jitted `decoder.extend` of one token per call, then the joint logits; the
Python loop only carries the mode, which is what lets the sequence switch modality at a
point the model chooses.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import decoder
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import options
from mars_jax.tokens import vocab


@dataclasses.dataclass
class Segment:
    """A piece of the output: text ids, or an image's codes `[h, w]`."""

    kind: str  # "text" | "image"
    ids: np.ndarray


def text_mode_mask() -> np.ndarray:
    """Ids allowed in text mode: every text id and `<img>`."""
    allowed = np.zeros(vocab.VOCAB_SIZE, bool)
    allowed[: vocab.TEXT_VOCAB_SIZE] = True
    allowed[vocab.IMAGE_START] = True
    return allowed


@functools.partial(jax.jit, static_argnames=("cfg",))
def _extend(weights, cache, tokens_1xT, positions_1xT, start, *, cfg):
    """Feed tokens; the joint logits `[1, 160136]` after the last one."""
    valid = jnp.ones_like(tokens_1xT, bool)
    h, cache = decoder.extend(weights, cache, tokens_1xT, positions_1xT, valid, start, cfg)
    return decoder.all_logits(weights, h[:, -1], cfg), cache


def code_logits(logits_BxV: jax.Array, codebook_size: int) -> jax.Array:
    """The image-code range of the joint logits: `[B, codebook_size]`."""
    return logits_BxV[:, vocab.FIRST_IMAGE_CODE : vocab.FIRST_IMAGE_CODE + codebook_size]


def prompt_with_images(text_ids: Sequence[int], image_codes: Sequence[np.ndarray]) -> list[int]:
    """The prompt's text, then each image as `<img> codes <end>` (paper §4.6: generation
    from text and image inputs)."""
    ids = [int(t) for t in text_ids]
    for codes in image_codes:
        ids += [vocab.IMAGE_START, *vocab.code_to_token(np.asarray(codes).reshape(-1)).tolist()]
        ids.append(vocab.IMAGE_END)
    return ids


def generate_interleaved(
    frozen: dict,
    trainable: dict,
    cfg: ModelConfig,
    prompt_ids: Sequence[int],
    grid_hw: tuple[int, int],
    text_scfg: options.SamplingConfig,
    image_scfg: options.SamplingConfig,
    max_tokens: int,
    seed: int = 0,
) -> list[Segment]:
    """Continue `prompt_ids` for at most `max_tokens` tokens (an image counts h*w + 2)."""
    if not prompt_ids:
        raise ValueError("interleaved generation needs a non-empty prompt")
    cfg.check_image_grid(grid_hw, "interleaved generation")
    prompt = np.asarray(prompt_ids, np.int32)[None]
    length = prompt.shape[1]
    weights = decoder.prepare(frozen, trainable, cfg, None, str(cfg.compute_dtype))
    cache = decoder.init_cache(cfg, 1, length + max_tokens, weights.compute_dtype)
    positions = np.arange(length, dtype=np.int32)[None]
    logits, cache = _extend(weights, cache, prompt, positions, 0, cfg=cfg)
    text_allowed = jnp.asarray(text_mode_mask())
    num_codes = grid_hw[0] * grid_hw[1]
    rng = jax.random.key(seed)
    segments: list[Segment] = []
    text: list[int] = []
    index = length

    def feed(token: int):
        nonlocal logits, cache, index
        logits, cache = _extend(
            weights, cache, jnp.asarray([[token]], jnp.int32), jnp.asarray([[index]], jnp.int32),
            index, cfg=cfg,
        )  # fmt: skip
        index += 1

    while index < length + max_tokens:
        rng, key = jax.random.split(rng)
        masked = jnp.where(text_allowed, logits, -jnp.inf)
        token = int(options.choose(masked, key, text_scfg)[0])
        if token == vocab.ENDOFTEXT:
            break
        if token != vocab.IMAGE_START:
            text.append(token)
            feed(token)
            continue
        if index + num_codes + 2 > length + max_tokens:
            break  # no room left for a whole image
        if text:
            segments.append(Segment("text", np.asarray(text, np.int32)))
            text = []
        feed(vocab.IMAGE_START)
        codes = []
        for _ in range(num_codes):
            rng, key = jax.random.split(rng)
            codes_logits = code_logits(logits, image_scfg.codebook_size)
            code = int(options.choose(codes_logits, key, image_scfg)[0])
            codes.append(code)
            feed(int(vocab.code_to_token(code)))  # next: a code or <end>
        segments.append(Segment("image", np.asarray(codes, np.int32).reshape(grid_hw)))
        feed(vocab.IMAGE_END)
    if text:
        segments.append(Segment("text", np.asarray(text, np.int32)))
    return segments
