"""Image files for VQ training: list a folder or a jsonl, load as square uint8, write grids.

A training set for the VQ tokenizer is small enough to hold in memory at its training
resolution (the demo: a few thousand 64×64 images). Unreadable files are skipped and returned
with the reason, never fatal, so one corrupt file does not cost a run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from mars_jax import outputs
from mars_jax.vq import model

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_JSONL_KEYS = ("path", "image", "file", "file_name")


def list_image_files(source: str) -> list[str]:
    """Image paths under a folder (recursive, sorted) or named by a jsonl file.

    jsonl lines are objects with one of the keys ``path``/``image``/``file``/``file_name``;
    relative paths are resolved against the jsonl's folder.
    """
    if os.path.isdir(source):
        found = []
        for root, _, files in os.walk(source):
            found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
        return sorted(found)
    if source.endswith(".jsonl") and os.path.isfile(source):
        base = os.path.dirname(os.path.abspath(source))
        paths = []
        with open(source) as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    key = next(k for k in _JSONL_KEYS if k in record)
                except (json.JSONDecodeError, StopIteration, TypeError) as e:
                    raise ValueError(
                        f"{source} line {line_no}: expected a JSON object with one of "
                        f"{_JSONL_KEYS} ({e!r})"
                    ) from e
                paths.append(os.path.join(base, record[key]))
        return paths
    raise ValueError(f"--images: {source!r} is neither a folder nor a .jsonl file")


def load_square(path: str, size: int) -> np.ndarray:
    """RGB uint8 ``[size, size, 3]``: center crop to a square, then bicubic resize."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
        if side != size:
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def load_images(paths: Sequence[str], size: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Loads every readable image; returns ``(images_NxSxSx3 uint8, [(path, reason) skipped])``."""
    images, skipped = [], []
    for path in paths:
        try:
            images.append(load_square(path, size))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            skipped.append((path, f"{type(e).__name__}: {e}"))
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, skipped


def save_grid(path: str, rows: Sequence[np.ndarray], pad: int = 2) -> None:
    """Writes rows of uint8 ``[N, H, W, 3]`` images as one PNG (row i above row i+1)."""
    n = max(len(r) for r in rows)
    tiles = np.concatenate(
        [np.concatenate([r, np.full((n - len(r), *r.shape[1:]), 255, np.uint8)]) for r in rows]
    )
    outputs.save_png(path, outputs.contact_sheet(tiles, columns=n, pad=pad, background=255))


def to_unit_range(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return images_uint8.astype(np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [-1, 1] → uint8 [0, 255] (clipped, rounded)."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def encode_uint8(params: dict, cfg, images_uint8: np.ndarray) -> np.ndarray:
    """VQ codes ``[N, h, w]`` of uint8 RGB images ``[N, H, W, 3]``."""
    return np.asarray(model.encode(params, cfg, to_unit_range(np.asarray(images_uint8))))


def decode_uint8(params: dict, cfg, codes_Nxhxw) -> np.ndarray:
    """uint8 RGB images ``[N, H, W, 3]`` of VQ codes ``[N, h, w]``."""
    return to_uint8(np.asarray(model.decode(params, cfg, np.asarray(codes_Nxhxw, np.int32))))
