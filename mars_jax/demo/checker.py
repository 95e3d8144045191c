"""Pixel checker: does an image show what a demo scene spec asks for?

Used by ``mars_jax.evaluate --bench=shapes`` to score generated images against held-out
prompts without any learned model. Every pixel is snapped to the nearest palette color (or
the background) when it is close enough, else left unassigned; 4-connected same-color
regions large enough to be an object are blobs. A blob's shape comes from two numbers that
survive mild blur from a VQ tokenizer: how much of its bounding box it fills (square ≈ 1,
circle ≈ 0.785, triangle ≈ 0.5) and how its area splits between its top and bottom halves
(a triangle with its apex up has 1/4 of its area in the top half; circle, square 1/2) tell
triangles apart; the extent of the rows and columns a quarter of the way in (the full side
for a square, even with rounded corners; √3/2 of it for a circle) tells circles from squares.

Verdicts per scene (None where a check does not apply to the scene kind):
color (every asked color present, no comparable object of another color), shape (the blobs
of each asked color have the asked shape), position (single: grid cell; relation: the
relation holds), size (single scenes whose caption names a size), count (count scenes),
binding (relation scenes: each color carries its own shape).

``is_blank``: an image with no object at all (background only), whatever was asked.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mars_jax.demo import shapes

# A pixel belongs to a palette color if it lies within this RGB distance of it (the closest
# pair of palette colors is ~100 apart; blurred edges between color and background stay out).
MAX_COLOR_DISTANCE = 70.0
MIN_BLOB_AREA = 40  # pixels; the smallest demo object (16-px triangle) covers ~128
LARGE_MIN_SIDE = 20  # bbox side separating "small" (16 px) from "large" (24 px)
RELATION_MIN_OFFSET = 4.0  # pixels between centers for left/right/above/below to hold
# Blank images: a pixel is an object pixel if it lies farther than this from the background
# color; an image with fewer object pixels than half the smallest blob is blank. Demo VQ
# decodes of background-only code grids leave 2 such pixels (a corner), the smallest
# object measured 44 (shapes bench, cfg 1-2.5, temperature 0.4-1).
OBJECT_MIN_DISTANCE = 40.0
BLANK_MAX_OBJECT_PIXELS = MIN_BLOB_AREA // 2

_PALETTE_NAMES = ("background", *shapes.COLORS)
_PALETTE_RGB = np.array([shapes.BACKGROUND_RGB, *shapes.COLORS.values()], np.float32)


@dataclasses.dataclass(frozen=True)
class Blob:
    """One same-color connected region; ``bbox`` = (x0, y0, x1, y1), end-exclusive."""

    color: str
    area: int
    bbox: tuple[int, int, int, int]
    fill: float  # area / bbox area
    top_fraction: float  # share of the area in the upper half of the bbox
    quarter_extent: float  # mean extent of the rows/columns at 1/4 and 3/4 of the bbox / its side

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    @property
    def side(self) -> int:
        x0, y0, x1, y1 = self.bbox
        return max(x1 - x0, y1 - y0)

    @property
    def shape(self) -> str:
        if self.top_fraction < 0.42 or self.fill < 0.64:
            return "triangle"
        # Square ≈ 1 + 1, circle ≈ 0.79 + 0.87; VQ reconstructions measured 1.45–1.76 for
        # circles and 1.82–2.0 for squares.
        return "square" if self.fill + self.quarter_extent >= 1.79 else "circle"


def palette_labels(image_HxWx3: np.ndarray) -> np.ndarray:
    """int [H, W]: index into (background, *COLORS) of each pixel, -1 where none is close."""
    image = np.asarray(image_HxWx3)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got shape {image.shape}")
    dist = np.linalg.norm(image[:, :, None, :].astype(np.float32) - _PALETTE_RGB, axis=-1)
    labels = dist.argmin(-1)
    return np.where(dist.min(-1) <= MAX_COLOR_DISTANCE, labels, -1)


def object_pixels(image_HxWx3: np.ndarray) -> int:
    """How many pixels lie farther than ``OBJECT_MIN_DISTANCE`` from the background color."""
    image = np.asarray(image_HxWx3)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got shape {image.shape}")
    dist = np.linalg.norm(image.astype(np.float32) - _PALETTE_RGB[0], axis=-1)
    return int(np.count_nonzero(dist > OBJECT_MIN_DISTANCE))


def is_blank(image_HxWx3: np.ndarray) -> bool:
    """True for a background-only image: fewer than ``BLANK_MAX_OBJECT_PIXELS`` object pixels."""
    return object_pixels(image_HxWx3) < BLANK_MAX_OBJECT_PIXELS


def connected_components(labels_HxW: np.ndarray) -> np.ndarray:
    """int [H, W]: 4-connected component id of equal-label pixels (-1 where label < 1).

    Min-label propagation: every pixel repeatedly takes the smallest id among its
    same-label neighbours until nothing changes.
    """
    h, w = labels_HxW.shape
    active = labels_HxW >= 1
    big = h * w
    comp = np.where(active, np.arange(big).reshape(h, w), big)
    same_down = active[:-1] & active[1:] & (labels_HxW[:-1] == labels_HxW[1:])
    same_right = active[:, :-1] & active[:, 1:] & (labels_HxW[:, :-1] == labels_HxW[:, 1:])
    while True:
        new = comp.copy()
        np.minimum(new[:-1], np.where(same_down, comp[1:], big), out=new[:-1])
        np.minimum(new[1:], np.where(same_down, comp[:-1], big), out=new[1:])
        np.minimum(new[:, :-1], np.where(same_right, comp[:, 1:], big), out=new[:, :-1])
        np.minimum(new[:, 1:], np.where(same_right, comp[:, :-1], big), out=new[:, 1:])
        if np.array_equal(new, comp):
            return np.where(active, comp, -1)
        comp = new


def find_blobs(image_HxWx3: np.ndarray, min_area: int = MIN_BLOB_AREA) -> list[Blob]:
    """All object-sized blobs of palette colors in the image, largest first."""
    labels = palette_labels(image_HxWx3)
    comp = connected_components(labels)
    blobs = []
    ids, areas = np.unique(comp[comp >= 0], return_counts=True)
    for cid, area in zip(ids, areas, strict=True):
        if area < min_area:
            continue
        ys, xs = np.nonzero(comp == cid)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        mid = (y0 + y1) / 2
        top = np.sum(ys + 0.5 < mid) + 0.5 * np.sum(ys + 0.5 == mid)
        mask = np.zeros((y1 - y0, x1 - x0), bool)
        mask[ys - y0, xs - x0] = True
        h, w = mask.shape
        rows = [mask[int(f * h)].sum() / w for f in (0.25, 0.75)]
        cols = [mask[:, int(f * w)].sum() / h for f in (0.25, 0.75)]
        blobs.append(
            Blob(
                color=_PALETTE_NAMES[labels[ys[0], xs[0]]],
                area=int(area),
                bbox=(int(x0), int(y0), int(x1), int(y1)),
                fill=float(area / ((x1 - x0) * (y1 - y0))),
                top_fraction=float(top / area),
                quarter_extent=float(np.mean(rows + cols)),
            )
        )
    return sorted(blobs, key=lambda b: -b.area)


def _cell(blob: Blob) -> tuple[int, int]:
    cx, cy = blob.center
    third = shapes.IMAGE_SIZE / 3
    return (min(int(cy // third), 2), min(int(cx // third), 2))


def _relation_holds(a: Blob, b: Blob, relation: str) -> bool:
    (ax, ay), (bx, by) = a.center, b.center
    d = RELATION_MIN_OFFSET
    return {
        "left of": ax < bx - d,
        "right of": ax > bx + d,
        "above": ay < by - d,
        "below": ay > by + d,
    }[relation]


def check(image_HxWx3: np.ndarray, spec: shapes.SceneSpec) -> dict[str, bool | None]:
    """Verdicts of one image against one scene spec (see the module docstring)."""
    blobs = find_blobs(image_HxWx3)
    by_color: dict[str, list[Blob]] = {}
    for b in blobs:
        by_color.setdefault(b.color, []).append(b)
    asked = {o.color: o.shape for o in spec.objects}
    matched = {c: by_color.get(c, []) for c in asked}
    present = all(matched.values())
    smallest_match = min((bs[0].area for bs in matched.values() if bs), default=0)
    stray = any(
        b.area >= 0.5 * smallest_match and b.color not in asked and b.color != "background"
        for b in blobs
    )
    color_ok = present and not stray

    if spec.kind == "count":
        shape_ok = present and all(b.shape == asked[c] for c, bs in matched.items() for b in bs)
    else:  # one object per asked color: its largest blob stands for it
        shape_ok = present and all(bs[0].shape == asked[c] for c, bs in matched.items())

    verdict: dict[str, bool | None] = {
        "color": color_ok,
        "shape": shape_ok,
        "position": None,
        "size": None,
        "count": None,
        "binding": None,
    }
    if spec.kind == "single":
        main = matched[spec.objects[0].color]
        verdict["position"] = bool(main) and _cell(main[0]) == shapes.POSITIONS[spec.position]
        if spec.size is not None:
            is_large = bool(main) and main[0].side >= LARGE_MIN_SIDE
            verdict["size"] = bool(main) and is_large == (spec.size == "large")
    elif spec.kind == "count":
        verdict["count"] = len(matched[spec.objects[0].color]) == spec.count
    else:
        a, b = (matched[o.color] for o in spec.objects)
        verdict["position"] = bool(a and b) and _relation_holds(a[0], b[0], spec.relation)
        verdict["binding"] = shape_ok
    return verdict


CHECKS = ("color", "shape", "position", "size", "count", "binding")


def accuracies(verdicts: list[dict[str, bool | None]]) -> dict[str, float]:
    """Mean of each check over the verdicts where it applies (checks never applicable: absent)."""
    out = {}
    for name in CHECKS:
        vals = [v[name] for v in verdicts if v.get(name) is not None]
        if vals:
            out[name] = float(np.mean(vals))
    return out
