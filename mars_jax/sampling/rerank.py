"""Best of N: keep the image the model's own captioner finds best described by the prompt.

MARS learns both directions in stage I, text → image and image → text (paper §3.4), so a
trained model can check its own drawings: of N images drawn for a prompt it keeps the one
under which the prompt, read as a caption, is most likely, `log p(prompt | image)` in the
caption task's format (`<img> codes <end> prompt <eot>`). This is CogView's self-reranking;
the score is the caption task's training loss of that row, summed instead of averaged, so
a model that never trained captions (`data.caption_ratio = 0`) has nothing to rank with.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import loss, mars
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import formats
from mars_jax.tokens.layout import Layout


@functools.partial(jax.jit, static_argnames=("layout", "cfg"))
def _row_log_likelihood(
    frozen: dict,
    trainable: dict,
    tokens_BxL: jax.Array,
    positions_BxL: jax.Array,
    valid_BxL: jax.Array,
    targets_BxL: jax.Array,
    loss_mask_BxL: jax.Array,
    *,
    layout: Layout,
    cfg: ModelConfig,
) -> jax.Array:
    """Summed log-probability `[B]` of each row's caption tokens (its loss-bearing targets)."""
    h_BxLxD = mars.forward_hidden(
        frozen, trainable, tokens_BxL, positions_BxL, valid_BxL, layout, cfg
    )
    # Only the text segment's targets bear loss: its first target sits at the image's `<end>`.
    first = int(layout[0][1]) - 1
    b, _, d = h_BxLxD.shape
    h_NxD = h_BxLxD[:, first:].reshape(-1, d)
    ce_N = loss.token_cross_entropy(
        frozen, trainable, h_NxD, targets_BxL[:, first:].reshape(-1), loss.FULL, cfg
    )
    return -jnp.sum(ce_N.reshape(b, -1) * loss_mask_BxL[:, first:], axis=1)


def caption_log_likelihood(
    frozen: dict,
    trainable: dict,
    cfg: ModelConfig,
    codes_Bxhxw: np.ndarray,
    caption_ids: Sequence[Sequence[int]],
) -> np.ndarray:
    """`log p(caption <eot> | image)` per row, `[B]` float32, as the caption task scores it.

    The caption slot holds the longest caption and its `<eot>`, rounded up to a multiple of
    8 so that prompts of other lengths reuse one compiled program; padding bears no loss.
    """
    texts = [np.asarray(ids, np.int64) for ids in caption_ids]
    slot = -(-(max(len(t) for t in texts) + 1) // 8) * 8
    batch = formats.caption_batch(list(np.asarray(codes_Bxhxw)), texts, slot)
    out = _row_log_likelihood(
        frozen, trainable,
        *(jnp.asarray(batch[k]) for k in loss.ARRAY_KEYS),
        layout=batch["layout"], cfg=cfg,
    )  # fmt: skip
    return np.asarray(out, np.float32)


def best_of(
    codes_BNxhxw: np.ndarray, scores_BN: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """From `n` consecutive candidates per prompt, the highest-scoring: codes `[B, h, w]` and
    the index `[B]` of the one kept (the first on ties)."""
    codes = np.asarray(codes_BNxhxw)
    scores_BxN = np.asarray(scores_BN).reshape(-1, n)
    index_B = np.argmax(scores_BxN, axis=1)
    kept = codes.reshape(len(index_B), n, *codes.shape[1:])[np.arange(len(index_B)), index_B]
    return kept, index_B
