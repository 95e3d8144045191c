"""How tokens are drawn (greedy, temperature, top-k, top-p) and classifier-free guidance.

Guidance is `cond + (scale - 1) * (cond - uncond)` on the logits, which is exactly the
conditional logits at scale 1. The unconditional stream is the caption-dropped form of each
prompt (an empty text slot), run in the same batch: rows `[cond; uncond]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.tokens import vocab

# What best of N's captioner reads of a candidate (`SamplingConfig.judge`).
JUDGES = ("pixels", "codes")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How codes are drawn. `temperature=0` is greedy; `top_k=0` and `top_p=1` disable them."""

    cfg_scale: float = 1.5
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # Images drawn per prompt; the one the model's own captioner ranks first is kept
    # (`sampling/rerank.py`). 1: plain sampling.
    candidates: int = 1
    # What the captioner reads of each candidate: "pixels", the VQ encoding of its decoded
    # image (what it was trained to read; a drawn code grid is not one the encoder would
    # give), or "codes", the drawn codes themselves (no decode and encode per candidate).
    judge: str = "pixels"
    # A candidate image whose pixels' standard deviation (uint8 levels) is below this, an
    # empty canvas, is kept only when every candidate is one: the captioner, which never
    # read an empty image in training, can rank one first. 0: no check.
    blank_std: float = 3.0
    # With one image per prompt (`candidates=1`), a draw flatter than `blank_std` is drawn
    # again, as the prompt's next candidate (the draw best of N makes next), up to this many
    # times; the first that is not blank is kept. With best of N, a prompt whose N
    # candidates are all blank draws its next N in their place, up to this many times.
    # 0: keep them.
    blank_redraws: int = 3
    codebook_size: int = vocab.NUM_IMAGE_CODES

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
        if self.candidates < 1:
            raise ValueError(f"sampling.candidates must be >= 1, got {self.candidates}")
        if not self.blank_std >= 0:
            raise ValueError(f"sampling.blank_std must be >= 0, got {self.blank_std}")
        if self.blank_redraws < 0:
            raise ValueError(f"sampling.blank_redraws must be >= 0, got {self.blank_redraws}")
        if self.judge not in JUDGES:
            raise ValueError(f"sampling.judge must be one of {JUDGES}, got {self.judge!r}")
        if not 0 < self.codebook_size <= vocab.NUM_IMAGE_CODES:
            raise ValueError(
                f"sampling.codebook_size must be in (0, 8192], got {self.codebook_size}"
            )

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0


# The options a run's config names in its `sample` section (configs/common.py).
RUN_OPTIONS = (
    "cfg_scale", "temperature", "top_k", "top_p", "candidates", "judge", "blank_std",
    "blank_redraws",
)  # fmt: skip


def run_options(sample: Mapping[str, Any] | None) -> dict[str, Any]:
    """`RUN_OPTIONS` from a run's `sample` config; absent ones take `SamplingConfig`'s defaults."""
    defaults = SamplingConfig()
    sample = sample or {}
    return {
        name: type(getattr(defaults, name))(sample.get(name, getattr(defaults, name)))
        for name in RUN_OPTIONS
    }


def with_unconditional(text_ids: Sequence[Sequence[int]]) -> list[Sequence[int]]:
    """The prompts' texts followed by as many empty texts: the rows `[cond; uncond]`."""
    return [*text_ids, *([[]] * len(text_ids))]


def guide(logits_2BxC: jax.Array, batch: int, scale: float) -> jax.Array:
    """Guided logits `[B, ...]` from rows `[cond; uncond]` (any trailing shape)."""
    cond, uncond = logits_2BxC[:batch], logits_2BxC[batch:]
    return cond + (scale - 1.0) * (cond - uncond)


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


def filtered(logits_BxC: jax.Array, scfg: SamplingConfig) -> jax.Array:
    """Logits divided by the temperature, then top-k / top-p filtered (any leading shape)."""
    c = logits_BxC.shape[-1]
    flat = filter_logits(logits_BxC.reshape(-1, c) / scfg.temperature, scfg.top_k, scfg.top_p)
    return flat.reshape(logits_BxC.shape)


def row_keys(seed: int, row_ids_Bx2: np.ndarray | Sequence[Sequence[int]]) -> jax.Array:
    """One key per row `[B]`: row `(i, j)`, the i-th prompt's (or image's) j-th candidate,
    draws from `key(seed)` folded with `i`, then `j`. A row's draws then depend on the seed,
    its prompt's place in the list and its candidate number, not on the batch size or on
    the other rows of its batch; and best of 16 draws best of 8's candidates and 8 more."""
    ids = jnp.asarray(np.asarray(row_ids_Bx2, np.uint32).reshape(-1, 2))
    base = jax.random.key(seed)
    return jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(base, i), j))(
        ids[:, 0], ids[:, 1]
    )


def call_keys(seed: int, num_rows: int, row_ids_Bx2: np.ndarray | None = None) -> jax.Array:
    """`row_keys` of a sampling call's rows: `row_ids_Bx2`, or when None the rows as prompts
    `0 … num_rows-1`, candidate 0 (a call that is the caller's whole list)."""
    return row_keys(seed, prompt_rows(0, num_rows) if row_ids_Bx2 is None else row_ids_Bx2)


def prompt_rows(first: int, count: int, candidates: int = 1) -> np.ndarray:
    """Row ids `[count * candidates, 2]` of prompts `first ...` with their candidates, each
    prompt's candidates consecutive (as `row_keys` reads them)."""
    prompts = np.repeat(np.arange(first, first + count), candidates)
    return np.stack([prompts, np.tile(np.arange(candidates), count)], axis=1)


def at_step(keys_B: jax.Array, step: jax.Array | int) -> jax.Array:
    """Each row's key for decoding step `step` `[B]`."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, step)


def choose_rows(logits_BxC: jax.Array, keys_B: jax.Array, scfg: SamplingConfig) -> jax.Array:
    """`choose` with a key per row: ids `[B]`, each drawn from its own row's key."""
    if scfg.temperature == 0.0:
        return jnp.argmax(logits_BxC, axis=-1).astype(jnp.int32)
    return draw_rows(keys_B, filtered(logits_BxC, scfg))


def draw_rows(keys_B: jax.Array, logits_Bx___xC: jax.Array) -> jax.Array:
    """Ids `[B, ...]` sampled from unnormalised log-probabilities over the last axis, row `b`
    from `keys_B[b]` alone."""
    draw = jax.vmap(lambda key, row: jax.random.categorical(key, row, axis=-1))
    return draw(keys_B, logits_Bx___xC).astype(jnp.int32)


def choose(logits_BxC: jax.Array, rng: jax.Array, scfg: SamplingConfig) -> jax.Array:
    """Ids `[B]` (any leading shape): argmax at temperature 0, else a filtered-softmax sample."""
    if scfg.temperature == 0.0:
        return jnp.argmax(logits_BxC, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filtered(logits_BxC, scfg), axis=-1).astype(jnp.int32)
