"""Image decoding, the paper's filters (§3.5) and the per-stage crops / resizes / buckets.

Sizes are ``(height, width)`` in pixels throughout; all of them come from flags or config,
so a 64-px demo and the paper's 256/1024-px data go through the same code.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image


class ImageError(ValueError):
    """An image that cannot be read or decoded."""


def load_rgb(image: str | bytes | np.ndarray, where: str) -> Image.Image:
    """Decode fully (so truncated files fail here, not later) and convert to RGB."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.stack([image] * 3, -1)
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or image.dtype != np.uint8:
            raise ImageError(f"{where}: array image of shape {image.shape} {image.dtype}")
        return Image.fromarray(image[..., :3] if image.shape[-1] != 1 else image[..., 0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
                im.load()
                return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as e:
        raise ImageError(f"{where}: unreadable image ({type(e).__name__}: {e})") from e


def filter_reason(
    height: int, width: int, min_side: int, max_aspect: float, min_long_side: int = 0
) -> str | None:
    """Why an image of this size is filtered out (§3.5), or None to keep it."""
    if min(height, width) < min_side:
        return "too_small"
    if max(height, width) / min(height, width) > max_aspect:
        return "aspect"
    if max(height, width) < min_long_side:
        return "too_small_long_side"
    return None


def resize_cover_crop(img: Image.Image, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize to cover ``out_hw`` keeping the aspect ratio, then centre-crop: uint8 [H, W, 3]."""
    out_h, out_w = out_hw
    scale = max(out_h / img.height, out_w / img.width)
    new_w = max(out_w, round(img.width * scale))
    new_h = max(out_h, round(img.height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
    return np.asarray(img.crop((left, top, left + out_w, top + out_h)), dtype=np.uint8)


def bucket_size(
    height: int, width: int, short_side: int, multiple: int, max_aspect: float
) -> tuple[int, int]:
    """Stage II size: short side ``short_side``, long side rounded to ``multiple`` (few buckets)."""
    if short_side % multiple:
        raise ValueError(f"short side {short_side} is not a multiple of {multiple}")
    aspect = min(max(height, width) / min(height, width), max_aspect)
    longest = math.floor(short_side * max_aspect / multiple) * multiple
    long_side = min(max(round(short_side * aspect / multiple) * multiple, short_side), longest)
    return (short_side, long_side) if height <= width else (long_side, short_side)


def hires_size(lo_hw: tuple[int, int], long_side: int, multiple: int) -> tuple[int, int]:
    """Stage III high-res size: the low-res aspect, long side ``long_side``, both sides rounded."""
    scale = long_side / max(lo_hw)
    return tuple(max(multiple, round(s * scale / multiple) * multiple) for s in lo_hw)
