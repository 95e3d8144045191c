"""Feature extractors for FID / CLIP score: the protocol, a demo extractor, a loader.

``FeatureExtractor`` is the seam: anything with ``image_features(images) -> [N, D]`` and
``text_features(texts) -> [N, D]`` (same D) can be plugged into ``mars_jax.evaluate
--bench=fid --extractor=module:attribute``. No weights are shipped or downloaded: published
FID needs Inception-v3 features and CLIP score a CLIP model, which users wrap themselves.

``PaletteFeatures`` is a deterministic, weight-free extractor for the built-in shapes demo
only: an image becomes the share of its object pixels in each demo color plus the share of
its object area in each shape (from the pixel checker's blobs); a caption becomes which of
those colors and shapes it names (English or Chinese). Its FID and CLIP score measure
color/shape statistics of demo scenes and nothing else.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from mars_jax.demo import checker, shapes


@runtime_checkable
class FeatureExtractor(Protocol):
    def image_features(self, images_NxHxWx3: np.ndarray) -> np.ndarray:
        """uint8 images [N, H, W, 3] → float features [N, D]."""
        ...

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        """N captions → float features [N, D] in the image features' space."""
        ...


_COLOR_NAMES = tuple(shapes.COLORS)
_SHAPE_NAMES = shapes.SHAPES


class PaletteFeatures:
    """Demo-only features: [8 color shares, 3 shape shares] (D = 11)."""

    dim = len(_COLOR_NAMES) + len(_SHAPE_NAMES)

    def image_features(self, images_NxHxWx3: np.ndarray) -> np.ndarray:
        out = np.zeros((len(images_NxHxWx3), self.dim))
        for i, image in enumerate(images_NxHxWx3):
            labels = checker.palette_labels(image)
            colors = np.bincount(labels[labels >= 1] - 1, minlength=len(_COLOR_NAMES))
            if colors.sum():
                out[i, : len(_COLOR_NAMES)] = colors / colors.sum()
            areas = np.zeros(len(_SHAPE_NAMES))
            for blob in checker.find_blobs(image):
                areas[_SHAPE_NAMES.index(blob.shape)] += blob.area
            if areas.sum():
                out[i, len(_COLOR_NAMES) :] = areas / areas.sum()
        return out

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim))
        names = [(c, shapes.COLORS_ZH[c]) for c in _COLOR_NAMES] + [
            (s, shapes.SHAPES_ZH[s]) for s in _SHAPE_NAMES
        ]
        for i, text in enumerate(texts):
            lower = text.lower()
            for j, (en, zh) in enumerate(names):
                if re.search(rf"\b{en}", lower) or zh in text:
                    out[i, j] = 1.0
            for lo, hi in ((0, len(_COLOR_NAMES)), (len(_COLOR_NAMES), self.dim)):
                if out[i, lo:hi].sum():
                    out[i, lo:hi] /= out[i, lo:hi].sum()
        return out


def load_extractor(spec: str) -> FeatureExtractor:
    """``"palette"`` or ``"package.module:attribute"`` (a class or factory called with no
    arguments, or an instance) → an extractor; a clear error if it lacks the protocol."""
    if spec == "palette":
        return PaletteFeatures()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--extractor={spec!r}: expected 'palette' or 'module:attribute'")
    obj = getattr(importlib.import_module(module_name), attr)
    is_factory = isinstance(obj, type) or (callable(obj) and not isinstance(obj, FeatureExtractor))
    extractor = obj() if is_factory else obj
    if not isinstance(extractor, FeatureExtractor):
        raise TypeError(
            f"--extractor={spec!r}: {type(extractor).__name__} has no "
            "image_features(images) and text_features(texts) methods"
        )
    return extractor
