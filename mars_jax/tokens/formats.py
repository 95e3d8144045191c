"""Sequence formats: one example's text ids and VQ codes → the static-layout rows of a task.

Formats (docs/ARCHITECTURE.md, "Layouts and batches"):

- ``t2i``     ``PAD… text <img> codes <end>``          layout ``(("text", T), ("vision", n + 2))``
- ``caption`` ``<img> codes <end> text <eot> PAD…``    layout ``(("vision", n + 2), ("text", T))``
- ``sr``      ``PAD… text <lo> lo-codes </lo> <img> hi-codes <end>``
  layout ``(("text", T), ("vision", n_lo + 2 + n_hi + 2))``

Decisions:

- ``targets[t]`` is ``tokens[t + 1]``; ``loss_mask[t]`` is 1 exactly where that target is a
  loss token: t2i/sr — the (high-res) codes and ``<end>`` (so the ``<img>`` position predicts
  the first code; ``<img>`` itself is forced by the sampler and never a target); caption — the
  text tokens and ``<eot>``.
- Padding (``valid=False``) lives only in text segments; ``positions`` count valid tokens only.
- ``sr`` positions of the image part follow the high-res raster, not the sequence
  (``sr_image_positions``): a high-res code at (Y, X) gets ``<img> + 1 + Y·W + X`` and a
  low-res code the position of its top-left child in a same-sized block before it. Every
  code then sits at one of a few fixed rotary offsets from its low-res parent, and at -1 / -W
  from its left / upper neighbour, whatever the (region-interleaved) generation order.
- Unconditional (caption-dropped) form, shared with the sampler: the text slot has no valid
  token at all, so ``<img>`` (t2i) or ``<lo>`` (sr) is the first valid token, at position 0.
- Variable grids (stages II/III) carry no row-end tokens: a batch holds one bucket, the grid is
  fixed by the static layout and named in the caption by ``resolution_prompt``.
- Long captions keep their first T tokens (t2i/sr) or T - 1 tokens plus ``<eot>`` (caption).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mars_jax.tokens import layout as model_layout
from mars_jax.tokens import vocab

Layout = model_layout.Layout
TaskRows = dict[str, np.ndarray]

ROW_KEYS = ("tokens", "positions", "valid", "targets", "loss_mask")
# The training tasks (a batch maps each to its rows): stage I t2i and caption, II t2i, III sr.
T2I, CAPTION, SR = "t2i", "caption", "sr"
TASKS = (T2I, CAPTION, SR)


def resolution_prompt(width: int, height: int, caption: str) -> str:
    """Stage II/III caption text: the output resolution first, so truncation never cuts it."""
    return f"{width}x{height} {caption}" if caption else f"{width}x{height}"


def t2i_layout(text_len: int, grid_hw: tuple[int, int]) -> Layout:
    return model_layout.t2i(text_len, grid_hw[0] * grid_hw[1])


def caption_layout(text_len: int, grid_hw: tuple[int, int]) -> Layout:
    return model_layout.caption(text_len, grid_hw[0] * grid_hw[1])


def sr_layout(text_len: int, lo_grid_hw: tuple[int, int], hi_grid_hw: tuple[int, int]) -> Layout:
    n_lo = lo_grid_hw[0] * lo_grid_hw[1]
    return model_layout.super_resolution(text_len, n_lo, hi_grid_hw[0] * hi_grid_hw[1])


def sr_hires_start(text_len: int, lo_grid_hw: tuple[int, int]) -> int:
    """Index of ``<img>`` (before the high-res codes) in an sr row; next-K masks start here."""
    return text_len + lo_grid_hw[0] * lo_grid_hw[1] + 2


layout_length = model_layout.length


def _as_ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def truncate(ids: Sequence[int] | np.ndarray, limit: int) -> tuple[np.ndarray, bool]:
    """First ``limit`` ids, and whether anything was cut."""
    ids = _as_ids(ids)
    return ids[:limit], ids.size > limit


def sr_image_positions(
    lo_grid_hw: tuple[int, int],
    hi_grid_hw: tuple[int, int],
    hi_order: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Rotary positions of ``<lo> lo-codes </lo> <img> hi-codes <end>``, relative to ``<lo>``.

    With n = H·W high-res codes: low-res code (u, v) at ``1 + (u·H // h)·W + v·W // w`` (its
    top-left child's place in a raster block of n), ``</lo>`` at n + 1, ``<img>`` at n + 2,
    high-res code (Y, X) at ``n + 3 + Y·W + X`` and ``<end>`` at 2n + 3. ``hi_order[i]`` is
    the raster index of the i-th high-res code in the sequence (``code_order.hires_order``;
    default raster order).
    """
    (h, w), (hh, ww) = (tuple(int(x) for x in g) for g in (lo_grid_hw, hi_grid_hw))
    n = hh * ww
    u, v = np.divmod(np.arange(h * w), w)
    lo = 1 + (u * hh // h) * ww + v * ww // w
    raster = np.arange(n) if hi_order is None else np.asarray(hi_order, np.int64).reshape(-1)
    if np.sort(raster).tolist() != list(range(n)):
        raise ValueError(f"hi_order is not a permutation of the {hh}x{ww} high-res raster")
    return np.concatenate([[0], lo, [n + 1, n + 2], n + 3 + raster, [2 * n + 3]]).astype(np.int64)


def _finish_batch(
    tokens: np.ndarray,
    valid: np.ndarray,
    is_loss: np.ndarray,
    layout,
    image_positions: np.ndarray | None = None,
) -> dict:
    """``_finish`` for a whole ``[B, L]`` batch at once."""
    positions = np.where(valid, np.cumsum(valid, axis=1) - 1, 0)
    if image_positions is not None:
        start = tokens.shape[1] - image_positions.size
        positions[:, start:] = positions[:, start : start + 1] + image_positions[None]
    targets = np.full_like(tokens, vocab.PAD)
    targets[:, :-1] = tokens[:, 1:]
    loss_mask = np.zeros(tokens.shape, np.float32)
    loss_mask[:, :-1] = is_loss[:, 1:] & valid[:, 1:] & valid[:, :-1]
    batch = {
        "tokens": tokens.astype(np.int32),
        "positions": positions.astype(np.int32),
        "valid": valid,
        "targets": np.where(valid, targets, vocab.PAD).astype(np.int32),
        "loss_mask": loss_mask,
        "layout": layout,
    }
    check_layout(batch)  # ARCHITECTURE.md: the pipeline guarantees each segment's modality
    return batch


def _text_lengths(texts: Sequence[np.ndarray], limit: int, what: str) -> np.ndarray:
    n = np.array([len(t) for t in texts], np.int64)
    if (n > limit).any():
        raise ValueError(f"{what}: {int(n.max())} text ids exceed the slot of {limit}")
    return n


def _image_block(codes: Sequence[np.ndarray], start: int, end: int) -> np.ndarray:
    """``[B, 1 + n + 1]``: start, the codes of each row (one grid for all), end."""
    flat = np.stack([np.asarray(c).reshape(-1) for c in codes]).astype(np.int64)
    b = flat.shape[0]
    return np.concatenate(
        [np.full((b, 1), start), vocab.code_to_token(flat), np.full((b, 1), end)], axis=1
    )


def _left_padded_text(texts: Sequence[np.ndarray], n_text: np.ndarray, text_len: int):
    tokens = np.full((len(texts), text_len), vocab.PAD, np.int64)
    for i, t in enumerate(texts):
        if n_text[i]:
            tokens[i, text_len - n_text[i] :] = t
    valid = np.arange(text_len)[None] >= (text_len - n_text)[:, None]
    return tokens, valid


def t2i_batch(texts: Sequence[np.ndarray], codes: Sequence[np.ndarray], text_len: int) -> dict:
    """A t2i task batch; equal to ``stack_rows`` of ``t2i_row``s, built without a row loop."""
    n_text = _text_lengths(texts, text_len, "t2i_batch")
    text, text_valid = _left_padded_text(texts, n_text, text_len)
    image = _image_block(codes, vocab.IMAGE_START, vocab.IMAGE_END)
    tokens = np.concatenate([text, image], axis=1)
    valid = np.concatenate([text_valid, np.ones(image.shape, bool)], axis=1)
    is_loss = np.zeros(tokens.shape, bool)
    is_loss[:, text_len + 1 :] = True
    grid = np.asarray(codes[0]).shape
    return _finish_batch(tokens, valid, is_loss, t2i_layout(text_len, grid))


def caption_batch(codes: Sequence[np.ndarray], texts: Sequence[np.ndarray], text_len: int) -> dict:
    """A caption task batch (``<img> codes <end> text <eot> PAD…``), without a row loop."""
    n_text = _text_lengths(texts, text_len - 1, "caption_batch") + 1  # with <eot>
    image = _image_block(codes, vocab.IMAGE_START, vocab.IMAGE_END)
    text = np.full((len(texts), text_len), vocab.PAD, np.int64)
    for i, t in enumerate(texts):
        text[i, : n_text[i] - 1] = t
        text[i, n_text[i] - 1] = vocab.ENDOFTEXT
    text_valid = np.arange(text_len)[None] < n_text[:, None]
    tokens = np.concatenate([image, text], axis=1)
    valid = np.concatenate([np.ones(image.shape, bool), text_valid], axis=1)
    is_loss = np.concatenate([np.zeros(image.shape, bool), text_valid], axis=1)
    grid = np.asarray(codes[0]).shape
    return _finish_batch(tokens, valid, is_loss, caption_layout(text_len, grid))


def sr_batch(
    texts: Sequence[np.ndarray],
    lo_codes: Sequence[np.ndarray],
    hi_codes: Sequence[np.ndarray],
    text_len: int,
    hi_order: Sequence[int] | np.ndarray | None = None,
) -> dict:
    """An sr task batch (loss on high-res codes and ``<end>``), without a row loop.

    High-res codes in sequence order; ``hi_order``: their raster indices (``sr_row``).
    """
    n_text = _text_lengths(texts, text_len, "sr_batch")
    text, text_valid = _left_padded_text(texts, n_text, text_len)
    lo = _image_block(lo_codes, vocab.LOWRES_START, vocab.LOWRES_END)
    hi = _image_block(hi_codes, vocab.IMAGE_START, vocab.IMAGE_END)
    tokens = np.concatenate([text, lo, hi], axis=1)
    valid = np.concatenate([text_valid, np.ones((len(texts), lo.shape[1] + hi.shape[1]), bool)], 1)
    is_loss = np.zeros(tokens.shape, bool)
    is_loss[:, text_len + lo.shape[1] + 1 :] = True
    lo_grid, hi_grid = np.asarray(lo_codes[0]).shape, np.asarray(hi_codes[0]).shape
    image_positions = sr_image_positions(lo_grid, hi_grid, hi_order)
    layout = sr_layout(text_len, lo_grid, hi_grid)
    return _finish_batch(tokens, valid, is_loss, layout, image_positions)


def check_layout(task_batch: dict) -> None:
    """Raise unless every valid token of each segment has that segment's modality and
    padding is text-slot ``PAD`` (``layout.check_tokens``)."""
    model_layout.check_tokens(
        task_batch["tokens"], task_batch["valid"], task_batch["layout"], "task batch"
    )


# ------------------------------------------------------------------------------ prompts


def t2i_prompt(text_ids: Sequence[Sequence[int]], text_len: int) -> dict[str, np.ndarray]:
    """``PAD… text <img>`` rows ``[B, text_len + 1]`` (the ``t2i`` format up to ``<img>``):
    tokens, positions, valid. Captions longer than the slot keep their first ``text_len``
    ids, as in training; an empty text is the unconditional form."""
    b = len(text_ids)
    tokens = np.full((b, text_len + 1), vocab.PAD, np.int32)
    valid = np.zeros((b, text_len + 1), bool)
    for row, ids in enumerate(text_ids):
        ids = _as_ids(ids)[:text_len]
        tokens[row, text_len - ids.size : text_len] = ids
        valid[row, text_len - ids.size :] = True
    tokens[:, text_len] = vocab.IMAGE_START
    positions = np.where(valid, np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    return {"tokens": tokens, "positions": positions, "valid": valid}


def sr_prompt(
    text_ids: Sequence[Sequence[int]],
    lo_codes: np.ndarray,
    text_len: int,
    hi_grid: tuple[int, int],
) -> dict[str, np.ndarray]:
    """``PAD… text <lo> lo-codes </lo> <img>`` rows (the ``sr`` format up to ``<img>``).

    The low-res codes' positions depend on the high-res grid (``sr_image_positions``).
    """
    lo_codes = np.asarray(lo_codes)
    if lo_codes.ndim != 3 or lo_codes.shape[0] != len(text_ids):
        raise ValueError(
            f"lo_codes must be [B, h, w] with B = {len(text_ids)} prompts, got {lo_codes.shape}"
        )
    vocab.check_codes_in_range(lo_codes, vocab.NUM_IMAGE_CODES, "low-res codes")
    texts = [_as_ids(ids)[:text_len] for ids in text_ids]
    hi = np.zeros((len(texts), int(hi_grid[0]), int(hi_grid[1])), np.int64)
    batch = sr_batch(texts, list(lo_codes), list(hi), text_len)
    cut = sr_hires_start(text_len, lo_codes.shape[1:]) + 1
    return {key: batch[key][:, :cut] for key in ("tokens", "positions", "valid")}
