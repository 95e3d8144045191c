"""Jitted text-to-image sampling with a static KV cache and classifier-free guidance.

The prompt uses the training format of `t2i` (DESIGN.md): a left-padded text slot, then
`<img>`; the unconditional stream is the caption-dropped form (a text slot with no valid
token), so `<img>` sits at position 0. Both streams run in one batch (rows `[cond; uncond]`)
and share every sampled code. Only image codes can be sampled inside an image, and the image
ends after exactly `h*w` codes: the sampler never looks at other logits there, so the
decoder skips the 151,936-way text head.

Guidance is `cond + (scale - 1) * (cond - uncond)` on the code logits, which is exactly the
conditional logits at scale 1.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import decode
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import vocab


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How codes are drawn. `temperature=0` is greedy; `top_k=0` and `top_p=1` disable them."""

    cfg_scale: float = 1.5
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    codebook_size: int = vocab.NUM_IMAGE_CODES

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
        if not 0 < self.codebook_size <= vocab.NUM_IMAGE_CODES:
            raise ValueError(
                f"sampling.codebook_size must be in (0, 8192], got {self.codebook_size}"
            )


# The options a run's config names in its `sample` section (configs/common.py).
RUN_OPTIONS = ("cfg_scale", "temperature", "top_k", "top_p")


def run_options(sample: Mapping[str, Any] | None) -> dict[str, Any]:
    """`RUN_OPTIONS` from a run's `sample` config; absent ones take `SamplingConfig`'s defaults."""
    defaults = SamplingConfig()
    sample = sample or {}
    return {
        name: type(getattr(defaults, name))(sample.get(name, getattr(defaults, name)))
        for name in RUN_OPTIONS
    }


def prompt_rows(text_ids: Sequence[Sequence[int]], text_len: int) -> dict[str, np.ndarray]:
    """`PAD… text <img>` rows `[B, text_len + 1]`: tokens, positions, valid.

    Captions longer than the slot keep their first `text_len` ids, as in training.
    """
    b = len(text_ids)
    tokens = np.full((b, text_len + 1), vocab.PAD, np.int32)
    valid = np.zeros((b, text_len + 1), bool)
    for row, ids in enumerate(text_ids):
        ids = np.asarray(ids, np.int32)[:text_len]
        tokens[row, text_len - ids.size : text_len] = ids
        valid[row, text_len - ids.size :] = True
    tokens[:, text_len] = vocab.IMAGE_START
    positions = np.where(valid, np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    return {"tokens": tokens, "positions": positions, "valid": valid}


def with_unconditional(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Append the unconditional stream: the same rows with an empty text slot."""
    uncond = prompt_rows([[] for _ in range(rows["tokens"].shape[0])], rows["tokens"].shape[1] - 1)
    return {k: np.concatenate([rows[k], uncond[k]], axis=0) for k in rows}


def filter_logits(logits_BxC: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Keep the `top_k` largest and the smallest set whose probability reaches `top_p`."""
    neg_inf = jnp.finfo(logits_BxC.dtype).min
    if top_k and top_k < logits_BxC.shape[-1]:
        kth = jax.lax.top_k(logits_BxC, top_k)[0][:, -1:]
        logits_BxC = jnp.where(logits_BxC < kth, neg_inf, logits_BxC)
    if top_p < 1.0:
        sorted_BxC = jnp.sort(logits_BxC, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_BxC, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < top_p  # always keeps the most likely code
        threshold = jnp.min(jnp.where(keep, sorted_BxC, jnp.inf), axis=-1, keepdims=True)
        logits_BxC = jnp.where(logits_BxC < threshold, neg_inf, logits_BxC)
    return logits_BxC


def choose_codes(logits_BxC: jax.Array, rng: jax.Array, scfg: SamplingConfig) -> jax.Array:
    if scfg.temperature == 0.0:
        return jnp.argmax(logits_BxC, axis=-1).astype(jnp.int32)
    logits_BxC = filter_logits(logits_BxC / scfg.temperature, scfg.top_k, scfg.top_p)
    return jax.random.categorical(rng, logits_BxC, axis=-1).astype(jnp.int32)


def code_logits(logits_BxV: jax.Array, codebook_size: int) -> jax.Array:
    """The image-code range of the joint logits: `[B, codebook_size]`."""
    return logits_BxV[:, vocab.FIRST_IMAGE_CODE : vocab.FIRST_IMAGE_CODE + codebook_size]


def guide(code_logits_2BxC: jax.Array, batch: int, scale: float) -> jax.Array:
    cond, uncond = code_logits_2BxC[:batch], code_logits_2BxC[batch:]
    return cond + (scale - 1.0) * (cond - uncond)


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "num_codes", "use_cfg"))
def sample_codes(
    frozen: dict,
    trainable: dict,
    tokens_RxP: jax.Array,
    positions_RxP: jax.Array,
    valid_RxP: jax.Array,
    rng: jax.Array,
    *,
    cfg: ModelConfig,
    scfg: SamplingConfig,
    num_codes: int,
    use_cfg: bool,
) -> jax.Array:
    """Draw `num_codes` image codes per prompt; rows are `[cond; uncond]` when `use_cfg`.

    Returns codebook indices `[B, num_codes]` (B = prompts).
    """
    rows, prompt_len = tokens_RxP.shape
    batch = rows // 2 if use_cfg else rows
    cache = decode.init_cache(cfg, rows, prompt_len + num_codes)
    logits_RxV, cache = decode.prefill(
        frozen, trainable, cache, tokens_RxP, positions_RxP, valid_RxP, None, cfg, vision_only=True
    )
    next_position_R = positions_RxP[:, -1] + 1

    def pick(logits_RxV, key):
        code_RxC = code_logits(logits_RxV, scfg.codebook_size)
        if use_cfg:
            code_RxC = guide(code_RxC, batch, scfg.cfg_scale)
        codes_B = choose_codes(code_RxC, key, scfg)
        return jnp.concatenate([codes_B, codes_B]) if use_cfg else codes_B

    def step(carry, key):
        logits_RxV, cache, index = carry
        codes_R = pick(logits_RxV, key)
        token_R = vocab.code_to_token(codes_R)
        logits_RxV, cache = decode.decode_step(
            frozen,
            trainable,
            cache,
            token_R,
            next_position_R + index,
            prompt_len + index,
            cfg,
            vision_only=True,
        )
        return (logits_RxV, cache, index + 1), codes_R[:batch]

    keys = jax.random.split(rng, num_codes)
    # The last code needs no forward pass after it: pick it outside the scan.
    (logits_RxV, _, _), codes_NxB = jax.lax.scan(step, (logits_RxV, cache, 0), keys[:-1])
    last_R = pick(logits_RxV, keys[-1])
    return jnp.concatenate([codes_NxB.T, last_R[:batch, None]], axis=1)


def generate_codes(
    frozen: dict,
    trainable: dict,
    cfg: ModelConfig,
    text_ids: Sequence[Sequence[int]],
    text_len: int,
    grid_hw: tuple[int, int],
    scfg: SamplingConfig,
    seed: int,
) -> np.ndarray:
    """Codes `[B, h, w]` for a batch of tokenized prompts (numpy in, numpy out)."""
    cfg.check_image_grid(grid_hw, "sampling")
    rows = prompt_rows(text_ids, text_len)
    use_cfg = scfg.cfg_scale != 1.0
    if use_cfg:
        rows = with_unconditional(rows)
    codes = sample_codes(
        frozen,
        trainable,
        jnp.asarray(rows["tokens"]),
        jnp.asarray(rows["positions"]),
        jnp.asarray(rows["valid"]),
        jax.random.key(seed),
        cfg=cfg,
        scfg=scfg,
        num_codes=grid_hw[0] * grid_hw[1],
        use_cfg=use_cfg,
    )
    return np.asarray(codes).reshape(len(text_ids), grid_hw[0], grid_hw[1])
