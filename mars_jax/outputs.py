"""What samplers write: PNG files, prompt lists, and the one contact-sheet builder.

numpy and Pillow only, so every layer (the VQ trainer, the training preview, the CLIs,
the benches) can write pictures the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

PROMPTS_FILE = "prompts.txt"
SHEET_FILE = "contact_sheet.png"
CANDIDATES_SHEET_FILE = "candidates_contact_sheet.png"
CANDIDATES_FILE = "candidates.jsonl"


def contact_sheet(
    images_NxHxWx3: np.ndarray,
    columns: int = 8,
    scale: int = 1,
    pad: int = 2,
    background: int = 96,
) -> np.ndarray:
    """Images tiled row-major (image i at row i // columns), each enlarged `scale` times by
    pixel repetition, with `pad`-px gutters of grey level `background`."""
    images = np.asarray(images_NxHxWx3)
    n, h, w, _ = images.shape
    h, w = h * scale, w * scale
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    sheet = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), background, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y : y + h, x : x + w] = img.repeat(scale, 0).repeat(scale, 1)
    return sheet


def sheet_scale(image_side: int, target: int = 128) -> int:
    """Enlargement that shows small images at about `target` px (1 for larger ones)."""
    return max(1, target // image_side)


def save_png(path: str, image_HxWx3: np.ndarray) -> str:
    Image.fromarray(np.asarray(image_HxWx3, np.uint8)).save(path)
    return path


def write_prompts(out_dir: str, prompts: Sequence[str], width: int = 4) -> str:
    """`prompts.txt`: one `<number>\\t<prompt>` line per sample."""
    path = os.path.join(out_dir, PROMPTS_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{i:0{width}d}\t{p}\n" for i, p in enumerate(prompts))
    return path


def save_samples(out_dir: str, prompts: Sequence[str], images: np.ndarray) -> str:
    """One PNG per sample (`0000.png`, …), `prompts.txt` and `contact_sheet.png`; returns the
    sheet's path."""
    os.makedirs(out_dir, exist_ok=True)
    for i, img in enumerate(images):
        save_png(os.path.join(out_dir, f"{i:04d}.png"), img)
    write_prompts(out_dir, prompts)
    sheet = contact_sheet(images, scale=sheet_scale(images.shape[1]))
    return save_png(os.path.join(out_dir, SHEET_FILE), sheet)


def save_candidates(
    out_dir: str,
    prompts: Sequence[str],
    images_BxNxHxWx3: np.ndarray,
    scores_BxN: np.ndarray,
    order_BxN: np.ndarray,
    blank_BxN: np.ndarray | None = None,
) -> str:
    """Best of N made visible: a sheet with one row per prompt, its N candidates in the order
    best of N ranked them (`order_BxN`, the kept one first), and `candidates.jsonl` (the
    scores in that order, which draw was kept, which draws were blank); returns the sheet's
    path."""
    os.makedirs(out_dir, exist_ok=True)
    images, scores = np.asarray(images_BxNxHxWx3), np.asarray(scores_BxN)
    order_BxN = np.asarray(order_BxN)
    blank = np.zeros(scores.shape, bool) if blank_BxN is None else np.asarray(blank_BxN, bool)
    ranked = np.take_along_axis(images, order_BxN[:, :, None, None, None], axis=1)
    with open(os.path.join(out_dir, CANDIDATES_FILE), "w", encoding="utf-8") as f:
        for i, (prompt, order) in enumerate(zip(prompts, order_BxN, strict=True)):
            record = {
                "index": i,
                "prompt": prompt,
                "kept_draw": int(order[0]),
                "caption_log_likelihood": [round(float(scores[i, k]), 4) for k in order],
                "blank_draws": [int(k) for k in np.flatnonzero(blank[i])],
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    n = images.shape[1]
    sheet = contact_sheet(
        ranked.reshape(-1, *images.shape[2:]), columns=n, scale=sheet_scale(images.shape[2])
    )
    return save_png(os.path.join(out_dir, CANDIDATES_SHEET_FILE), sheet)


def save_pairs(
    out_dir: str, prompts: Sequence[str], low: np.ndarray, high: np.ndarray, sheet_file: str
) -> str:
    """`low_XXX.png`, `high_XXX.png`, `prompts.txt` and a sheet of (low upscaled, high)
    pairs, one pair a row; returns the sheet's path."""
    os.makedirs(out_dir, exist_ok=True)
    for i, (lo, hi) in enumerate(zip(low, high, strict=True)):
        save_png(os.path.join(out_dir, f"low_{i:03d}.png"), lo)
        save_png(os.path.join(out_dir, f"high_{i:03d}.png"), hi)
    write_prompts(out_dir, prompts, width=3)
    h, w = high.shape[1:3]
    up = [np.asarray(Image.fromarray(lo).resize((w, h), Image.Resampling.NEAREST)) for lo in low]
    tiles = np.stack([x for pair in zip(up, high, strict=True) for x in pair])
    sheet = contact_sheet(tiles, columns=2, background=128)
    return save_png(os.path.join(out_dir, sheet_file), sheet)
