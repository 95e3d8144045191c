"""Best of N: the model checks its own outputs with its other direction.

MARS learns both directions in stage I, text → image and image → text (paper §3.4), so a
trained model can rank what it draws and what it writes:

- of N images drawn for a prompt it keeps the one under which the prompt, read as a
  caption, is most likely: `log p(prompt | image)` in the caption task's format
  (`<img> codes <end> prompt <eot>`), CogView's self-reranking. The codes it reads are, by
  default, the VQ encoding of the candidate's decoded image (`SamplingConfig.judge`,
  `images.draw_codes`): the caption task trained on encoder outputs, and a drawn grid is
  not one (about half its codes differ from its image's encoding);
- of N captions written for an image it keeps the one that best explains the image both
  ways, `log p(caption | image) + log p(image | caption)`: the caption model alone prefers
  short, generic captions; the text-to-image model checks that the caption's colors and
  shapes produce this image.

Of N images, an empty canvas (one flat color: `blank_images`) is kept only when all N are:
the captioner never read an empty image in training, and it can score one above every
drawn object.

Each score is a task's training loss of that row, summed instead of averaged, so a model
that never trained captions (`data.caption_ratio = 0`) has nothing to rank images with.
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
from mars_jax.tokens import layout as layout_lib


@functools.partial(jax.jit, static_argnames=("layout", "scored", "cfg"))
def _row_log_likelihood(
    frozen: dict,
    trainable: dict,
    tokens_BxL: jax.Array,
    positions_BxL: jax.Array,
    valid_BxL: jax.Array,
    targets_BxL: jax.Array,
    loss_mask_BxL: jax.Array,
    *,
    layout: layout_lib.Layout,
    scored: str,
    cfg: ModelConfig,
) -> jax.Array:
    """Summed log-probability `[B]` of each row's loss-bearing targets of modality `scored`
    (the same softmax as `loss.task_loss`; the other segments' heads are never computed)."""
    h_BxLxD = mars.forward_hidden(
        frozen, trainable, tokens_BxL, positions_BxL, valid_BxL, layout, cfg
    )
    b, _, d = h_BxLxD.shape
    restrict = cfg.image_logits == "vision_only"
    total_B = jnp.zeros((b,), jnp.float32)
    for modality, start, stop in layout_lib.bounds(layout_lib.target_layout(layout)):
        if modality != scored:
            continue
        mode = loss.VISION_ONLY if restrict and modality == layout_lib.VISION else loss.FULL
        ce_N = loss.token_cross_entropy(
            frozen, trainable, h_BxLxD[:, start:stop].reshape(-1, d),
            targets_BxL[:, start:stop].reshape(-1), mode, cfg,
        )  # fmt: skip
        total_B = total_B - jnp.sum(ce_N.reshape(b, -1) * loss_mask_BxL[:, start:stop], axis=1)
    return total_B


def _score(frozen: dict, trainable: dict, cfg: ModelConfig, batch: dict, scored: str) -> np.ndarray:
    out = _row_log_likelihood(
        frozen, trainable,
        *(jnp.asarray(batch[k]) for k in loss.ARRAY_KEYS),
        layout=batch["layout"], scored=scored, cfg=cfg,
    )  # fmt: skip
    return np.asarray(out, np.float32)


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
    return _score(frozen, trainable, cfg, batch, layout_lib.TEXT)


def image_log_likelihood(
    frozen: dict,
    trainable: dict,
    cfg: ModelConfig,
    codes_Bxhxw: np.ndarray,
    text_ids: Sequence[Sequence[int]],
    text_len: int,
) -> np.ndarray:
    """`log p(image codes <end> | text)` per row, `[B]` float32, as the text-to-image task
    scores it (the text in the model's `text_len` slot; longer texts keep their start)."""
    texts = [np.asarray(ids, np.int64)[:text_len] for ids in text_ids]
    batch = formats.t2i_batch(texts, list(np.asarray(codes_Bxhxw)), text_len)
    return _score(frozen, trainable, cfg, batch, layout_lib.VISION)


def blank_images(images_NxHxWx3: np.ndarray, max_std: float) -> np.ndarray:
    """Which uint8 images are one flat color `[N]` bool: the standard deviation of their
    pixels (all channels, uint8 levels) below `max_std` (0: none is)."""
    images = np.asarray(images_NxHxWx3, np.float32)
    return images.reshape(len(images), -1).std(axis=1) < max_std


def ranking_scores(scores_BxN: np.ndarray, blank_BxN: np.ndarray | None = None) -> np.ndarray:
    """The scores candidates are ranked by `[B, N]`: a blank candidate's is -inf unless all
    of its prompt's candidates are blank."""
    scores = np.asarray(scores_BxN, np.float32)
    if blank_BxN is None:
        return scores
    blank = np.asarray(blank_BxN, bool)
    demoted = blank & ~np.all(blank, axis=1, keepdims=True)
    return np.where(demoted, -np.inf, scores)


def best_of(
    codes_BNxhxw: np.ndarray,
    scores_BN: np.ndarray,
    n: int,
    blank_BN: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """From `n` consecutive candidates per prompt, the highest-scoring (a blank one only
    where all are, `ranking_scores`): codes `[B, h, w]` and the index `[B]` of the one kept
    (the first on ties)."""
    codes = np.asarray(codes_BNxhxw)
    scores_BxN = np.asarray(scores_BN).reshape(-1, n)
    blank_BxN = None if blank_BN is None else np.asarray(blank_BN).reshape(-1, n)
    index_B = np.argmax(ranking_scores(scores_BxN, blank_BxN), axis=1)
    kept = codes.reshape(len(index_B), n, *codes.shape[1:])[np.arange(len(index_B)), index_B]
    return kept, index_B
