"""Greedy decoding by full recompute: the reference the cached decoders are tested against.

No cache: every step reruns the whole sequence through the general forward pass. The
sequence lies in a buffer of its final length whose later slots are masked out, so one
compiled program serves every step.
"""

import functools

import jax
import numpy as np

from mars_jax.model import mars
from mars_jax.model.config import ModelConfig


@functools.partial(jax.jit, static_argnums=5)
def _all_logits(frozen, trainable, tokens, positions, valid, cfg: ModelConfig):
    return mars.forward_logits(frozen, trainable, tokens, positions, valid, None, cfg)


def greedy_by_recompute(
    frozen, trainable, cfg: ModelConfig, tokens, positions, valid, prompt_len: int, steps: int,
    choose,
) -> np.ndarray:  # fmt: skip
    """The picks of `steps` decoding steps after the first `prompt_len` slots of the buffer
    (`tokens`, `positions`, `valid`: `[R, prompt_len + steps]`, later slots invalid).

    `choose(logits_RxV)` returns `(kept, written)`: the step's picks to return and the `[R]`
    tokens written into the rows (they differ when guidance pairs two rows per prompt).
    """
    tokens, valid = np.array(tokens), np.array(valid)
    out = []
    for i in range(steps):
        last = prompt_len + i - 1
        logits = _all_logits(frozen, trainable, tokens, positions, valid, cfg)[:, last]
        kept, written = choose(logits)
        out.append(kept)
        tokens[:, last + 1], valid[:, last + 1] = written, True
    return np.stack(out, axis=1)
