"""Image → text: captioning in the stage-I `caption` format (paper §3.4), on the one decoder.

The prompt is `<img> codes <end>` (all vision tokens, one vision-expert prefill); the caption
is then decoded one token per `decoder.extend` from the frozen text head, over the text ids
up to `<|endoftext|>` (which ends it; the Qwen specials after it and the padding rows are
never drawn), or over those of one language (`text/languages.py`). Greedy at temperature 0,
else temperature / top-k / top-p sampling.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import decoder
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import options
from mars_jax.sampling.options import SamplingConfig
from mars_jax.text import languages
from mars_jax.tokens import vocab


def prompt_tokens(codes_Bxhxw: np.ndarray) -> np.ndarray:
    """`<img> codes <end>` rows `[B, h*w + 2]`."""
    codes = np.asarray(codes_Bxhxw).reshape(len(codes_Bxhxw), -1)
    b = codes.shape[0]
    return np.concatenate(
        [
            np.full((b, 1), vocab.IMAGE_START),
            vocab.code_to_token(codes),
            np.full((b, 1), vocab.IMAGE_END),
        ],
        axis=1,
    ).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "max_tokens"))
def caption_ids(
    weights: decoder.DecodeWeights,
    prompt_BxP: jax.Array,
    rng: jax.Array,
    allowed_V: jax.Array,
    *,
    cfg: ModelConfig,
    scfg: SamplingConfig,
    max_tokens: int,
) -> jax.Array:
    """Caption token ids `[B, max_tokens]` drawn from the ids `allowed_V` marks (`[151936]`
    bool); after a row's `<|endoftext|>` it repeats it."""
    b, p = prompt_BxP.shape
    cache = decoder.init_cache(cfg, b, p + max_tokens, weights.compute_dtype)
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    h, cache = decoder.extend(
        weights, cache, prompt_BxP, positions, jnp.ones((b, p), bool), 0, cfg, "vision"
    )

    def step(carry, key):
        h_BxD, cache, i, done_B = carry
        logits = jnp.where(allowed_V, decoder.text_logits(weights, h_BxD, cfg), -jnp.inf)
        token_B = jnp.where(done_B, vocab.ENDOFTEXT, options.choose(logits, key, scfg))
        h, cache = decoder.extend(
            weights, cache, token_B[:, None], jnp.full((b, 1), p + i, jnp.int32),
            jnp.ones((b, 1), bool), p + i, cfg, "text",
        )  # fmt: skip
        return (h[:, -1], cache, i + 1, done_B | (token_B == vocab.ENDOFTEXT)), token_B

    keys = jax.random.split(rng, max_tokens)
    start = (h[:, -1], cache, jnp.int32(0), jnp.zeros((b,), bool))
    _, tokens_TxB = jax.lax.scan(step, start, keys)
    return tokens_TxB.T


def caption_codes(
    frozen: dict | decoder.DecodeWeights,
    trainable: dict | None,
    cfg: ModelConfig,
    codes_Bxhxw: np.ndarray,
    scfg: SamplingConfig,
    max_tokens: int = 64,
    seed: int = 0,
    lang: str = languages.ANY,
) -> list[list[int]]:
    """Caption ids of each image (VQ codes `[B, h, w]`), without `<|endoftext|>`, in `lang`
    (`en`, `zh`, or `any`: the model's choice)."""
    allowed = jnp.asarray(languages.allowed_text_ids(lang))
    cfg.check_image_grid(tuple(np.shape(codes_Bxhxw)[1:]), "captioning")
    if isinstance(frozen, decoder.DecodeWeights):
        weights = frozen
    else:
        weights = decoder.prepare(frozen, trainable, cfg, None, str(cfg.compute_dtype))
    ids = caption_ids(
        weights, jnp.asarray(prompt_tokens(codes_Bxhxw)), jax.random.key(seed), allowed,
        cfg=cfg, scfg=scfg, max_tokens=int(max_tokens),
    )  # fmt: skip
    out = []
    for row in np.asarray(ids).tolist():
        out.append(row[: row.index(vocab.ENDOFTEXT)] if vocab.ENDOFTEXT in row else row)
    return out
