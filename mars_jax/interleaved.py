"""Joint text and image generation (paper §4.6): write text, open an image, fill it, go on.

One sequence, one KV cache, decoded token by token with a state machine:

- text mode: sample among text ids and `<img>` (image codes and other specials are masked);
  `<|endoftext|>` ends the sequence;
- `<img>` switches to image mode: exactly `h*w` codes are sampled from the code range
  (vision head only), then `<end>` is forced and decoding returns to text mode.

The step is one jitted `decode_step` per token (two compiled variants: full logits for text,
vision-only for codes); the Python loop only carries the mode, which is what lets the
sequence switch modality at a point the model chooses.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax import sampling
from mars_jax.model import decode
from mars_jax.model.config import ModelConfig
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


@functools.partial(jax.jit, static_argnames=("cfg", "vision_only"))
def _step(frozen, trainable, cache, token_1, position_1, index, *, cfg, vision_only):
    return decode.decode_step(
        frozen, trainable, cache, token_1, position_1, index, cfg, vision_only=vision_only
    )


@functools.partial(jax.jit, static_argnames=("cfg",))
def _prefill(frozen, trainable, cache, tokens, positions, valid, *, cfg):
    return decode.prefill(frozen, trainable, cache, tokens, positions, valid, None, cfg)


def generate_interleaved(
    frozen: dict,
    trainable: dict,
    cfg: ModelConfig,
    prompt_ids: Sequence[int],
    grid_hw: tuple[int, int],
    text_scfg: sampling.SamplingConfig,
    image_scfg: sampling.SamplingConfig,
    max_tokens: int,
    seed: int = 0,
) -> list[Segment]:
    """Continue `prompt_ids` for at most `max_tokens` tokens (an image counts h*w + 2)."""
    if not prompt_ids:
        raise ValueError("interleaved generation needs a non-empty prompt")
    cfg.check_image_grid(grid_hw, "interleaved generation")
    prompt = np.asarray(prompt_ids, np.int32)[None]
    length = prompt.shape[1]
    cache = decode.init_cache(cfg, 1, length + max_tokens)
    positions = np.arange(length, dtype=np.int32)[None]
    logits, cache = _prefill(
        frozen, trainable, cache, prompt, positions, np.ones_like(prompt, bool), cfg=cfg
    )
    text_allowed = jnp.asarray(text_mode_mask())
    num_codes = grid_hw[0] * grid_hw[1]
    rng = jax.random.key(seed)
    segments: list[Segment] = []
    text: list[int] = []
    index = length

    def feed(token: int, vision_only: bool):
        nonlocal logits, cache, index
        logits, cache = _step(
            frozen, trainable, cache, jnp.asarray([token], jnp.int32),
            jnp.asarray([index], jnp.int32), index, cfg=cfg, vision_only=vision_only,
        )  # fmt: skip
        index += 1

    while index < length + max_tokens:
        rng, key = jax.random.split(rng)
        masked = jnp.where(text_allowed, logits, -jnp.inf)
        token = int(sampling.choose_codes(masked, key, text_scfg)[0])
        if token == vocab.ENDOFTEXT:
            break
        if token != vocab.IMAGE_START:
            text.append(token)
            feed(token, vision_only=False)
            continue
        if index + num_codes + 2 > length + max_tokens:
            break  # no room left for a whole image
        if text:
            segments.append(Segment("text", np.asarray(text, np.int32)))
            text = []
        feed(vocab.IMAGE_START, vision_only=True)
        codes = []
        for _ in range(num_codes):
            rng, key = jax.random.split(rng)
            code_logits = sampling.code_logits(logits, image_scfg.codebook_size)
            code = int(sampling.choose_codes(code_logits, key, image_scfg)[0])
            codes.append(code)
            feed(int(vocab.code_to_token(code)), vision_only=True)  # next: a code or <end>
        segments.append(Segment("image", np.asarray(codes, np.int32).reshape(grid_hw)))
        feed(vocab.IMAGE_END, vision_only=False)
    if text:
        segments.append(Segment("text", np.asarray(text, np.int32)))
    return segments
