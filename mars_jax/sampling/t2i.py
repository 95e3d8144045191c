"""Text → image codes: a jitted loop of one-code decoder steps with classifier-free guidance.

The prompt is the `t2i` training format up to `<img>` (`formats.t2i_prompt`): a left-padded
text slot, then `<img>`; the unconditional stream is the caption-dropped form (no valid
text token). Both streams run in one batch and share every sampled code. Only image codes
can be sampled inside an image, and it ends after exactly `h*w` codes, so only the vision
head's code columns are computed (`decoder.code_logits`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import decoder
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import options
from mars_jax.sampling.options import SamplingConfig
from mars_jax.tokens import formats, vocab


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "num_codes", "text_len"))
def sample_codes(
    weights: decoder.DecodeWeights,
    tokens_RxP: jax.Array,
    positions_RxP: jax.Array,
    valid_RxP: jax.Array,
    keys_B: jax.Array,
    *,
    cfg: ModelConfig,
    scfg: SamplingConfig,
    num_codes: int,
    text_len: int,
) -> jax.Array:
    """Draw `num_codes` image codes per prompt: codebook indices `[B, num_codes]`.

    Rows are `[cond; uncond]` when `scfg.guided`; `text_len` is the prompt's text slot.
    `keys_B`: each prompt's key (`options.row_keys`); its code `i` is drawn from
    `fold_in(key, i)`, so a prompt's codes do not depend on the rest of the batch.
    """
    rows, prompt_len = tokens_RxP.shape
    batch = rows // 2 if scfg.guided else rows
    cache = decoder.init_cache(cfg, rows, prompt_len + num_codes, weights.compute_dtype)
    h, cache = decoder.prefill(weights, cache, tokens_RxP, positions_RxP, valid_RxP, cfg, text_len)
    next_position_R = positions_RxP[:, -1] + 1

    def pick(h_RxD, index):
        logits_RxC = decoder.code_logits(weights, h_RxD, cfg)
        if scfg.guided:
            logits_RxC = options.guide(logits_RxC, batch, scfg.cfg_scale)
        codes_B = options.choose_rows(logits_RxC, options.at_step(keys_B, index), scfg)
        return jnp.concatenate([codes_B, codes_B]) if scfg.guided else codes_B

    def step(carry, _):
        h_RxD, cache, index = carry
        codes_R = pick(h_RxD, index)
        tokens_Rx1 = vocab.code_to_token(codes_R)[:, None]
        h, cache = decoder.extend(
            weights, cache, tokens_Rx1, (next_position_R + index)[:, None],
            jnp.ones_like(tokens_Rx1, bool), prompt_len + index, cfg, "vision",
        )  # fmt: skip
        return (h[:, -1], cache, index + 1), codes_R[:batch]

    # The last code needs no forward pass after it: pick it outside the scan.
    (h_RxD, _, _), codes_NxB = jax.lax.scan(step, (h[:, -1], cache, 0), None, length=num_codes - 1)
    last_R = pick(h_RxD, num_codes - 1)
    return jnp.concatenate([codes_NxB.T, last_R[:batch, None]], axis=1)


def generate_codes(
    frozen: dict | decoder.DecodeWeights,
    trainable: dict | None,
    cfg: ModelConfig,
    text_ids: Sequence[Sequence[int]],
    text_len: int,
    grid_hw: tuple[int, int],
    scfg: SamplingConfig,
    seed: int,
    row_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Codes `[B, h, w]` for a batch of tokenized prompts (numpy in, numpy out).

    `row_ids` `[B, 2]`: each row's prompt index and candidate number in the caller's list
    (`options.row_keys`; default: prompts `0 … B-1`, candidate 0). `frozen` may be
    `decoder.prepare(..., num_codes=scfg.codebook_size)`'s weights (then `trainable` is
    None): made once, they serve many calls.
    """
    cfg.check_image_grid(grid_hw, "sampling")
    weights = prepared_weights(frozen, trainable, cfg, scfg.codebook_size)
    texts = options.with_unconditional(text_ids) if scfg.guided else text_ids
    rows = formats.t2i_prompt(texts, text_len)
    codes = sample_codes(
        weights,
        jnp.asarray(rows["tokens"]),
        jnp.asarray(rows["positions"]),
        jnp.asarray(rows["valid"]),
        options.call_keys(seed, len(text_ids), row_ids),
        cfg=cfg,
        scfg=scfg,
        num_codes=grid_hw[0] * grid_hw[1],
        text_len=text_len,
    )
    return np.asarray(codes).reshape(len(text_ids), grid_hw[0], grid_hw[1])


def prepared_weights(
    frozen: dict | decoder.DecodeWeights,
    trainable: dict | None,
    cfg: ModelConfig,
    num_codes: int,
) -> decoder.DecodeWeights:
    """`frozen` if it is already prepared for `num_codes` codes, else `decoder.prepare`.

    Text-to-image decodes in the model's compute dtype (its training numerics)."""
    if isinstance(frozen, decoder.DecodeWeights):
        if frozen.num_codes != num_codes:
            raise ValueError(
                f"weights prepared for {frozen.num_codes} codes, the sampler asks {num_codes}"
            )
        return frozen
    return decoder.prepare(frozen, trainable, cfg, num_codes, str(cfg.compute_dtype))
