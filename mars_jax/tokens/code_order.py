"""Stage-III high-res code order (paper §3.1, PAR 2024): region-interleaved, numpy only.

The K codes sampled together should depend on each other weakly, so the high-res codes are
written in *region-interleaved* order: the grid is cut into K equal regions
(`region_grid`), and the sequence takes the first code of every region, then the second of
every region, and so on, so the K codes of one step lie in K different regions of the image.
`hires_order` gives the permutation and `to_sequence_order` / `to_raster` apply it.
"""

from __future__ import annotations

import math

import numpy as np


def region_grid(hi_grid_hw: tuple[int, int], k: int) -> tuple[int, int]:
    """`(rows, cols)` of regions, rows * cols = k: the cut whose regions are largest in
    their shorter side (so the k codes of one step are far apart), then the squarest.

    Each region must be a whole block of codes: rows divides h and cols divides w.
    """
    h, w = (int(x) for x in hi_grid_hw)
    fits = [(r, k // r) for r in range(1, k + 1) if k % r == 0 and h % r == 0 and w % (k // r) == 0]
    if not fits:
        raise ValueError(
            f"model.nktp_k={k}: the high-res grid {h}x{w} cannot be cut into {k} equal "
            "rectangular regions (choose K whose factors divide the grid sides)"
        )

    def badness(rc):
        rh, rw = h // rc[0], w // rc[1]
        return (-min(rh, rw), abs(math.log(rh / rw)), rc[0])

    return min(fits, key=badness)


def hires_order(hi_grid_hw: tuple[int, int], k: int) -> np.ndarray:
    """`order[i]` = raster index of the i-th high-res code in the sequence; identity if k = 1.

    Region-interleaved: step s (codes `s*k … s*k + k - 1`) holds the s-th code (raster order
    inside the region) of each of the k regions, regions in raster order.
    """
    h, w = (int(x) for x in hi_grid_hw)
    rows, cols = region_grid((h, w), k)
    rh, rw = h // rows, w // cols
    raster = np.arange(h * w).reshape(rows, rh, cols, rw)  # [region row, y, region col, x]
    by_region = raster.transpose(0, 2, 1, 3).reshape(k, rh * rw)  # [region, code in region]
    return np.ascontiguousarray(by_region.T.reshape(-1))


def inverse_order(order: np.ndarray) -> np.ndarray:
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    return inv


def to_sequence_order(codes_hxw: np.ndarray, k: int) -> np.ndarray:
    """Raster codes `[..., h, w]` → the same codes in sequence order, still shaped `[..., h, w]`.

    The data hook: pass the result to `formats.sr_batch` in place of the
    raster codes (they flatten in memory order, so the grid shape and layout are unchanged).
    """
    codes = np.asarray(codes_hxw)
    h, w = codes.shape[-2:]
    flat = codes.reshape(*codes.shape[:-2], h * w)
    return flat[..., hires_order((h, w), k)].reshape(codes.shape)


def to_raster(codes_seq: np.ndarray, hi_grid_hw: tuple[int, int], k: int) -> np.ndarray:
    """Codes in sequence order `[..., h*w]` (or `[..., h, w]`) → raster grid `[..., h, w]`."""
    h, w = (int(x) for x in hi_grid_hw)
    codes = np.asarray(codes_seq)
    flat = codes.reshape(*codes.shape[: codes.ndim - (2 if codes.shape[-2:] == (h, w) else 1)], -1)
    if flat.shape[-1] != h * w:
        raise ValueError(f"to_raster: {flat.shape[-1]} codes do not fill the grid {h}x{w}")
    return flat[..., inverse_order(hires_order((h, w), k))].reshape(*flat.shape[:-1], h, w)
