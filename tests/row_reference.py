"""Row-at-a-time builders of the task formats: the reference the batch builders of
`mars_jax.tokens.formats` are tested against (written plainly, one example at a time)."""

from collections.abc import Sequence

import numpy as np

from mars_jax.tokens import vocab
from mars_jax.tokens.formats import (
    ROW_KEYS,
    Layout,
    TaskRows,
    _as_ids,
    check_layout,
    layout_length,
    sr_image_positions,
)


def _finish(
    tokens: np.ndarray,
    valid: np.ndarray,
    is_loss_token: np.ndarray,
    image_positions: np.ndarray | None = None,
) -> TaskRows:
    """Derive positions, next-token targets and the loss mask from one row's tokens.

    ``image_positions``: positions of the row's last ``len(image_positions)`` tokens, relative
    to the first of them (default: they count on like the rest).
    """
    positions = np.where(valid, np.cumsum(valid) - 1, 0)
    if image_positions is not None:
        start = tokens.size - image_positions.size
        positions[start:] = positions[start] + image_positions
    targets = np.full_like(tokens, vocab.PAD)
    targets[:-1] = tokens[1:]
    loss_mask = np.zeros(tokens.shape, np.float32)
    loss_mask[:-1] = is_loss_token[1:] & valid[1:] & valid[:-1]
    targets = np.where(valid, targets, vocab.PAD)
    return {
        "tokens": tokens.astype(np.int32),
        "positions": positions.astype(np.int32),
        "valid": valid,
        "targets": targets.astype(np.int32),
        "loss_mask": loss_mask,
    }


def _image_tokens(codes: np.ndarray, start: int, end: int) -> np.ndarray:
    return np.concatenate([[start], vocab.code_to_token(_as_ids(codes)), [end]])


def t2i_row(text_ids: Sequence[int] | np.ndarray, codes: np.ndarray, text_len: int) -> TaskRows:
    """``PAD… text <img> codes <end>``; text left-padded to ``text_len`` (truncate first)."""
    text = _as_ids(text_ids)
    if text.size > text_len:
        raise ValueError(f"t2i_row: {text.size} text ids exceed the slot of {text_len}")
    image = _image_tokens(codes, vocab.IMAGE_START, vocab.IMAGE_END)
    pad = np.full(text_len - text.size, vocab.PAD)
    tokens = np.concatenate([pad, text, image])
    valid = np.concatenate([np.zeros(pad.size, bool), np.ones(text.size + image.size, bool)])
    loss = np.zeros(tokens.shape, bool)
    loss[text_len + 1 :] = True  # codes and <end>
    return _finish(tokens, valid, loss)


def caption_row(codes: np.ndarray, text_ids: Sequence[int] | np.ndarray, text_len: int) -> TaskRows:
    """``<img> codes <end> text <eot> PAD…``; text + ``<eot>`` right-padded to ``text_len``."""
    text = _as_ids(text_ids)
    if text.size + 1 > text_len:
        raise ValueError(f"caption_row: {text.size} text ids + <eot> exceed the slot of {text_len}")
    image = _image_tokens(codes, vocab.IMAGE_START, vocab.IMAGE_END)
    n_text = text.size + 1
    tokens = np.concatenate([image, text, [vocab.ENDOFTEXT], np.full(text_len - n_text, vocab.PAD)])
    valid = np.zeros(tokens.shape, bool)
    valid[: image.size + n_text] = True
    loss = np.zeros(tokens.shape, bool)
    loss[image.size : image.size + n_text] = True  # text and <eot>
    return _finish(tokens, valid, loss)


def sr_row(
    text_ids: Sequence[int] | np.ndarray,
    lo_codes: np.ndarray,
    hi_codes: np.ndarray,
    text_len: int,
    hi_order: Sequence[int] | np.ndarray | None = None,
) -> TaskRows:
    """``PAD… text <lo> lo-codes </lo> <img> hi-codes <end>``; loss on hi-codes and ``<end>``.

    ``hi_codes`` ``[H, W]`` in sequence order; ``hi_order``: their raster indices
    (``sr_image_positions``).
    """
    text = _as_ids(text_ids)
    if text.size > text_len:
        raise ValueError(f"sr_row: {text.size} text ids exceed the slot of {text_len}")
    lo = _image_tokens(lo_codes, vocab.LOWRES_START, vocab.LOWRES_END)
    hi = _image_tokens(hi_codes, vocab.IMAGE_START, vocab.IMAGE_END)
    pad = np.full(text_len - text.size, vocab.PAD)
    tokens = np.concatenate([pad, text, lo, hi])
    valid = np.concatenate([np.zeros(pad.size, bool), np.ones(tokens.size - pad.size, bool)])
    loss = np.zeros(tokens.shape, bool)
    loss[text_len + lo.size + 1 :] = True
    lo_grid, hi_grid = np.shape(lo_codes), np.shape(hi_codes)
    return _finish(tokens, valid, loss, sr_image_positions(lo_grid, hi_grid, hi_order))


def stack_rows(rows: Sequence[TaskRows], layout: Layout) -> dict:
    """Rows of one task → the task batch ``{"tokens", …: [B, L], "layout": layout}``."""
    length = layout_length(layout)
    batch = {k: np.stack([r[k] for r in rows]) for k in ROW_KEYS}
    if batch["tokens"].shape[1] != length:
        raise ValueError(f"rows of length {batch['tokens'].shape[1]} do not fit layout {layout}")
    batch["layout"] = layout
    check_layout(batch)
    return batch
