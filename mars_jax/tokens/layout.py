"""Static sequence layouts: which contiguous slices of a sequence are text, which vision.

A `Layout` is a tuple of `(modality, length)` segments, hashable, so it is a static jit
argument. The model runs each expert only on its own segments; every token of a segment
must have that modality (`check_tokens`).
"""

from __future__ import annotations

import numpy as np

from mars_jax.tokens import vocab

TEXT = "text"
VISION = "vision"
MODALITIES = (TEXT, VISION)

Layout = tuple[tuple[str, int], ...]


def make_layout(*segments: tuple[str, int]) -> Layout:
    """Validated layout; adjacent segments of one modality are merged."""
    out: list[tuple[str, int]] = []
    for modality, length in segments:
        if modality not in MODALITIES:
            raise ValueError(f"layout segment modality {modality!r} not in {MODALITIES}")
        length = int(length)
        if length < 0:
            raise ValueError(f"layout segment ({modality!r}, {length}): negative length")
        if length == 0:
            continue
        if out and out[-1][0] == modality:
            out[-1] = (modality, out[-1][1] + length)
        else:
            out.append((modality, length))
    if not out:
        raise ValueError("layout has no tokens")
    return tuple(out)


def t2i(text_len: int, image_tokens: int) -> Layout:
    """`text ▸ <img> codes <end>` with `image_tokens` = h*w codes."""
    return make_layout((TEXT, text_len), (VISION, image_tokens + 2))


def caption(text_len: int, image_tokens: int) -> Layout:
    """`<img> codes <end> ▸ text <eot>`."""
    return make_layout((VISION, image_tokens + 2), (TEXT, text_len))


def super_resolution(text_len: int, low_tokens: int, high_tokens: int) -> Layout:
    """`text ▸ <lo> low codes </lo> <img> high codes <end>`."""
    return make_layout((TEXT, text_len), (VISION, low_tokens + 2 + high_tokens + 2))


def length(layout: Layout) -> int:
    return sum(n for _, n in layout)


def bounds(layout: Layout) -> list[tuple[str, int, int]]:
    """`(modality, start, stop)` of each segment."""
    out, start = [], 0
    for modality, n in layout:
        out.append((modality, start, start + n))
        start += n
    return out


def target_layout(layout: Layout) -> Layout:
    """Layout of the *targets*: position t predicts token t+1, so it takes t+1's modality.

    The last position has no next token; it keeps its own modality.
    """
    shifted = [(m, n) for (m, _), n in zip(layout, _shifted_lengths(layout), strict=True)]
    return make_layout(*shifted)


def _shifted_lengths(layout: Layout) -> list[int]:
    lengths = [n for _, n in layout]
    lengths[0] -= 1
    lengths[-1] += 1
    return lengths


def check_tokens(tokens_BxL: np.ndarray, valid_BxL: np.ndarray, layout: Layout, where: str) -> None:
    """Raise naming `where` unless every valid token has its segment's modality, and padding
    (`valid=False`) is `PAD` inside text segments only: the one check of a batch's layout."""
    tokens_BxL, valid_BxL = np.asarray(tokens_BxL), np.asarray(valid_BxL, bool)
    if tokens_BxL.shape[-1] != length(layout):
        raise ValueError(
            f"{where}: sequence length {tokens_BxL.shape[-1]} != layout length {length(layout)}"
            f" ({layout})"
        )
    for modality, start, stop in bounds(layout):
        seg_tokens, seg_valid = tokens_BxL[..., start:stop], valid_BxL[..., start:stop]
        wrong = (vocab.is_vision(seg_tokens) != (modality == VISION)) & seg_valid
        if wrong.any():
            idx = np.argwhere(wrong)[0]
            raise ValueError(
                f"{where}: token {int(seg_tokens[tuple(idx)])} at index "
                f"{tuple(int(i) for i in idx[:-1])}+{start + int(idx[-1])} is not {modality} "
                f"but lies in the {modality} segment [{start}, {stop}) of layout {layout}"
            )
        if modality == VISION and not seg_valid.all():
            raise ValueError(f"{where}: padding inside the vision segment [{start}, {stop})")
        if (seg_tokens[~seg_valid] != vocab.PAD).any():
            raise ValueError(f"{where}: padding that is not PAD in [{start}, {stop})")
