"""Deterministic synthetic scenes of colored shapes, captioned in English and Chinese.

The built-in demo needs data that costs nothing to download, that a small VQ tokenizer with
an 8×8 latent grid can represent exactly, and whose content a pixel checker can verify.
Scenes are 64×64 RGB: one to three flat-colored shapes (no anti-aliasing) on a plain dark
background, with boxes of 16 or 24 px aligned to the 8-px latent grid. Three kinds of scene:

- ``single``: one object with a size word (sometimes) and a cell of a 3×3 grid;
- ``count``: two or three identical small objects;
- ``relation``: two objects of different colors, one left of / right of / above / below the
  other (tests attribute binding).

Held-out split (``is_held_out``): whole attribute combinations that no training scene has,
while every object type (color × shape) and every attribute value is seen in training:
- single: each color × shape pair is held out in one cell of the 3×3 grid,
  cell index (row·3 + col) = (color index + 3·shape index) mod 9;
- count: (color, shape, n) with (color index + shape index + n) mod 6 = 0;
- relation: the two objects' pair, in either order and under any relation, when
  (color_a + 3·shape_a + color_b + 3·shape_b) mod 7 = 0 (indices in ``COLORS``, ``SHAPES``).
Evaluation prompts are drawn only from these. Holding out whole color × shape pairs instead
would ask for VQ codes (say, a blue circle's edge) that no training sequence contains, which
an autoregressive model over codes cannot produce.

Each example ``i`` of a split is drawn from its own ``numpy`` generator seeded by
``(seed, split, i)``, so example ``i`` does not depend on how many examples are drawn.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

IMAGE_SIZE = 64
BACKGROUND_RGB = (16, 16, 16)

# Well-separated flat colors (pairwise RGB distance >= ~100), with their Chinese names.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 70, 230),
    "yellow": (250, 230, 40),
    "purple": (150, 40, 200),
    "orange": (255, 130, 0),
    "cyan": (30, 220, 230),
    "white": (245, 245, 245),
}
COLORS_ZH = {
    "red": "红色",
    "green": "绿色",
    "blue": "蓝色",
    "yellow": "黄色",
    "purple": "紫色",
    "orange": "橙色",
    "cyan": "青色",
    "white": "白色",
}
SHAPES = ("circle", "square", "triangle")
SHAPES_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
SHAPES_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}

# Objects are squares of 2 or 3 latent cells of an f8 tokenizer, placed on the latent grid:
# an 8×8 patch then holds one of few boundary shapes, which a 512-code VQ can represent in
# every color (free placement blurred colors together at this codebook size).
GRID = 8
SIZES = {"small": 16, "large": 24}
THIRD_MARGIN = 2.5  # px between a single object's center and the 3×3 grid's borders
SIZES_ZH = {"small": "小", "large": "大"}

# 3×3 grid cells, (row, col) → English phrase / Chinese phrase.
POSITIONS = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}
POSITIONS_EN = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
POSITIONS_ZH = {
    "top left": "左上角",
    "top": "上方",
    "top right": "右上角",
    "left": "左边",
    "center": "中间",
    "right": "右边",
    "bottom left": "左下角",
    "bottom": "下方",
    "bottom right": "右下角",
}
RELATIONS = ("left of", "right of", "above", "below")
RELATIONS_EN = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
RELATIONS_ZH = {"left of": "左边", "right of": "右边", "above": "上面", "below": "下面"}
COUNTS_EN = {2: "two", 3: "three"}
COUNTS_ZH = {2: "两", 3: "三"}

ALL_PAIRS = tuple((c, s) for c in COLORS for s in SHAPES)

# How often each kind of scene is drawn: the held-out prompts always use this mix; the
# training data may use another (`check_kind_mix`, the demo config's `data.demo_kind_mix`).
SCENE_KIND_PROBS = {"single": 0.4, "count": 0.2, "relation": 0.4}
_SPLIT_IDS = {"train": 0, "eval": 1}


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """One drawn object; ``bbox`` = (x0, y0, x1, y1) in pixels, end-exclusive."""

    color: str
    shape: str
    bbox: tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """What a caption asks for, plus the ground-truth geometry of the rendered scene.

    ``size`` (single only) is the size word used in the caption or None when the caption has
    none; ``position`` (single only) is a key of ``POSITIONS``; ``relation`` (relation only)
    says where ``objects[0]`` is relative to ``objects[1]``.
    """

    kind: str
    objects: tuple[ObjectSpec, ...]
    size: str | None = None
    position: str | None = None
    relation: str | None = None

    @property
    def count(self) -> int:
        return len(self.objects)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SceneSpec:
        objects = tuple(
            ObjectSpec(o["color"], o["shape"], tuple(int(v) for v in o["bbox"]))
            for o in d["objects"]
        )
        spec = cls(d["kind"], objects, d.get("size"), d.get("position"), d.get("relation"))
        validate_spec(spec)
        return spec


def validate_spec(spec: SceneSpec) -> None:
    """Raise ValueError naming the bad field if ``spec`` is not a well-formed scene."""
    if spec.kind not in SCENE_KIND_PROBS:
        raise ValueError(f"scene kind {spec.kind!r} not in {sorted(SCENE_KIND_PROBS)}")
    for o in spec.objects:
        if o.color not in COLORS:
            raise ValueError(f"object color {o.color!r} not in {sorted(COLORS)}")
        if o.shape not in SHAPES:
            raise ValueError(f"object shape {o.shape!r} not in {SHAPES}")
    expected = {"single": (1, 1), "count": (2, 3), "relation": (2, 2)}[spec.kind]
    if not expected[0] <= len(spec.objects) <= expected[1]:
        raise ValueError(f"{spec.kind} scene has {len(spec.objects)} objects")
    if spec.kind == "single" and spec.position not in POSITIONS:
        raise ValueError(f"position {spec.position!r} not in {sorted(POSITIONS)}")
    if spec.size is not None and spec.size not in SIZES:
        raise ValueError(f"size {spec.size!r} not in {sorted(SIZES)}")
    if spec.kind == "relation":
        if spec.relation not in RELATIONS:
            raise ValueError(f"relation {spec.relation!r} not in {RELATIONS}")
        if spec.objects[0].color == spec.objects[1].color:
            raise ValueError("relation objects must differ in color")


# ----------------------------------------------------------------------------- rendering


def shape_mask(shape: str, bbox: tuple[int, int, int, int], size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean [size, size] mask of a flat shape filling ``bbox`` (pixel centers, no AA)."""
    x0, y0, x1, y1 = bbox
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    w, h = x1 - x0, y1 - y0
    if shape == "square":
        return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    if shape == "circle":
        cx, cy = x0 + w / 2, y0 + h / 2
        return ((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1.0
    if shape == "triangle":  # apex at top center, base along the bottom edge
        t = (ys - y0) / h  # 0 at apex, 1 at base
        half = t * w / 2
        cx = x0 + w / 2
        return (ys >= y0) & (ys < y1) & (np.abs(xs - cx) <= half)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(spec: SceneSpec) -> np.ndarray:
    """The scene as uint8 [64, 64, 3]."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    image[:] = BACKGROUND_RGB
    for o in spec.objects:
        image[shape_mask(o.shape, o.bbox)] = COLORS[o.color]
    return image


# ----------------------------------------------------------------------------- sampling


def _box(x0: int, y0: int, side: int) -> tuple[int, int, int, int]:
    return (x0, y0, x0 + side, y0 + side)


def _grid_origins(side: int) -> list[int]:
    """Box origins on the latent grid that keep a box of ``side`` inside the canvas."""
    return list(range(0, IMAGE_SIZE - side + 1, GRID))


def _origin_in_third(rng: np.random.Generator, third: int, side: int) -> int:
    """A grid origin whose box of ``side`` has its center in third ``third`` of the canvas,
    at least ``THIRD_MARGIN`` px from the thirds' borders (a blurred triangle apex moves the
    box center by ~1.5 px)."""
    options = []
    for o in _grid_origins(side):
        center = o + side / 2
        to_border = min(abs(center - k * IMAGE_SIZE / 3) for k in (1, 2))
        if int(center // (IMAGE_SIZE / 3)) == third and to_border >= THIRD_MARGIN:
            options.append(o)
    return options[rng.integers(len(options))]


def _sample_single(rng, pairs) -> SceneSpec:
    color, shape = pairs[rng.integers(len(pairs))]
    size = ("small", "large")[rng.integers(2)]
    position = list(POSITIONS)[rng.integers(len(POSITIONS))]
    row, col = POSITIONS[position]
    side = SIZES[size]
    bbox = _box(_origin_in_third(rng, col, side), _origin_in_third(rng, row, side), side)
    said_size = size if rng.random() < 0.5 else None
    return SceneSpec("single", (ObjectSpec(color, shape, bbox),), said_size, position)


def _disjoint(a, b, gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _sample_count(rng, pairs) -> SceneSpec:
    color, shape = pairs[rng.integers(len(pairs))]
    n = int(rng.integers(2, 4))
    side = SIZES["small"]
    origins = _grid_origins(side)
    boxes: list[tuple[int, int, int, int]] = []
    tries = 0
    while len(boxes) < n:  # rejection sampling, restarted when early boxes block the rest
        tries += 1
        if tries % 50 == 0:
            boxes = []
        x0, y0 = (origins[i] for i in rng.integers(len(origins), size=2))
        box = _box(x0, y0, side)
        if all(_disjoint(box, b, gap=GRID) for b in boxes):
            boxes.append(box)
    return SceneSpec("count", tuple(ObjectSpec(color, shape, b) for b in boxes))


def _sample_relation(rng, first_pairs, second_pairs) -> SceneSpec:
    color_a, shape_a = first_pairs[rng.integers(len(first_pairs))]
    others = [p for p in second_pairs if p[0] != color_a]
    color_b, shape_b = others[rng.integers(len(others))]
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    side_a, side_b = (SIZES[("small", "large")[rng.integers(2)]] for _ in range(2))
    # Along the relation axis: the low object in the first half of the canvas, the high one
    # in the second, at least one latent cell apart.
    half = IMAGE_SIZE // 2
    first_is_low = relation in ("left of", "above")
    side_lo, side_hi = (side_a, side_b) if first_is_low else (side_b, side_a)
    pairs = [
        (lo, hi)
        for lo in _grid_origins(side_lo)
        if lo + side_lo <= half
        for hi in _grid_origins(side_hi)
        if hi >= half and lo + side_lo + GRID <= hi
    ]
    lo, hi = pairs[rng.integers(len(pairs))]
    along_a, along_b = (lo, hi) if first_is_low else (hi, lo)
    across_a = _grid_origins(side_a)[rng.integers(len(_grid_origins(side_a)))]
    across_b = _grid_origins(side_b)[rng.integers(len(_grid_origins(side_b)))]
    if relation in ("left of", "right of"):
        box_a, box_b = _box(along_a, across_a, side_a), _box(along_b, across_b, side_b)
    else:
        box_a, box_b = _box(across_a, along_a, side_a), _box(across_b, along_b, side_b)
    objects = (ObjectSpec(color_a, shape_a, box_a), ObjectSpec(color_b, shape_b, box_b))
    return SceneSpec("relation", objects, relation=relation)


def is_held_out(spec: SceneSpec) -> bool:
    """Whether the scene's attribute combination belongs to the held-out split (see top)."""
    color = [list(COLORS).index(o.color) for o in spec.objects]
    shape = [SHAPES.index(o.shape) for o in spec.objects]
    if spec.kind == "single":
        row, col = POSITIONS[spec.position]
        return row * 3 + col == (color[0] + 3 * shape[0]) % 9
    if spec.kind == "count":
        return (color[0] + shape[0] + spec.count) % 6 == 0
    return (color[0] + 3 * shape[0] + color[1] + 3 * shape[1]) % 7 == 0


def check_kind_mix(kind_mix: dict[str, float] | None) -> dict[str, float]:
    """The mix of scene kinds as probabilities (default ``SCENE_KIND_PROBS``); ValueError
    naming the bad kind or weight otherwise. Weights need not sum to 1."""
    if kind_mix is None:
        return dict(SCENE_KIND_PROBS)
    if hasattr(kind_mix, "to_dict"):  # an ml_collections ConfigDict
        kind_mix = kind_mix.to_dict()
    mix = {str(k): float(v) for k, v in dict(kind_mix).items()}
    unknown = sorted(set(mix) - set(SCENE_KIND_PROBS))
    if unknown:
        raise ValueError(
            f"scene kind mix: unknown kinds {unknown}; known {sorted(SCENE_KIND_PROBS)}"
        )
    if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"scene kind mix: weights must be >= 0 and not all 0, got {mix}")
    total = sum(mix.values())
    return {k: mix.get(k, 0.0) / total for k in SCENE_KIND_PROBS}


def sample_scene(
    rng: np.random.Generator, split: str = "train", kind_mix: dict[str, float] | None = None
) -> SceneSpec:
    """One random scene of the split (rejection sampling on ``is_held_out``); ``kind_mix``:
    weights of the scene kinds (default ``SCENE_KIND_PROBS``)."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split {split!r} not in {sorted(_SPLIT_IDS)}")
    probs = check_kind_mix(kind_mix)
    kinds = list(probs)
    while True:
        kind = kinds[rng.choice(len(kinds), p=list(probs.values()))]
        if kind == "single":
            spec = _sample_single(rng, ALL_PAIRS)
        elif kind == "count":
            spec = _sample_count(rng, ALL_PAIRS)
        else:
            spec = _sample_relation(rng, ALL_PAIRS, ALL_PAIRS)
        if is_held_out(spec) == (split == "eval"):
            validate_spec(spec)
            return spec


# ----------------------------------------------------------------------------- captions


def _object_en(color: str, shape: str, size: str | None = None) -> str:
    words = " ".join(w for w in (size, color, shape) if w)
    return ("an " if words[0] in "aeiou" else "a ") + words


def _object_zh(color: str, shape: str, size: str | None = None) -> str:
    return "一个" + COLORS_ZH[color] + "的" + (SIZES_ZH[size] if size else "") + SHAPES_ZH[shape]


def caption(spec: SceneSpec, lang: str, rng: np.random.Generator | None = None) -> str:
    """A natural caption of ``spec`` in ``lang`` ('en' or 'zh'); ``rng`` picks a template."""
    template = 0 if rng is None else int(rng.integers(2))
    o = spec.objects[0]
    if lang == "en":
        if spec.kind == "single":
            obj = _object_en(o.color, o.shape, spec.size)
            pos = POSITIONS_EN[spec.position]
            return f"{obj} {pos}" if template == 0 else f"{pos}, {obj}".capitalize()
        if spec.kind == "count":
            n = COUNTS_EN[spec.count]
            phrase = f"{n} {o.color} {SHAPES_PLURAL[o.shape]}"
            return phrase if template == 0 else f"there are {phrase}"
        b = spec.objects[1]
        a_txt, b_txt = _object_en(o.color, o.shape), _object_en(b.color, b.shape)
        rel = RELATIONS_EN[spec.relation]
        verb = " " if template == 0 else " is "
        return f"{a_txt}{verb}{rel} {b_txt}"
    if lang == "zh":
        if spec.kind == "single":
            obj = _object_zh(o.color, o.shape, spec.size)
            pos = POSITIONS_ZH[spec.position]
            return f"{obj}在{pos}" if template == 0 else f"{pos}有{obj}"
        if spec.kind == "count":
            n = COUNTS_ZH[spec.count]
            phrase = f"{n}个{COLORS_ZH[o.color]}的{SHAPES_ZH[o.shape]}"
            return phrase if template == 0 else f"画面里有{phrase}"
        b = spec.objects[1]
        rel = RELATIONS_ZH[spec.relation]
        a_txt, b_txt = _object_zh(o.color, o.shape), _object_zh(b.color, b.shape)
        return f"{a_txt}在{b_txt}的{rel}" if template == 0 else f"{b_txt}的{rel}是{a_txt}"
    raise ValueError(f"caption language {lang!r} not in ('en', 'zh')")


# ----------------------------------------------------------------------------- data sets


@dataclasses.dataclass
class ShapesData:
    """Parallel arrays: images uint8 [N, 64, 64, 3], captions, langs, specs."""

    images: np.ndarray
    captions: list[str]
    langs: list[str]
    specs: list[SceneSpec]


def example(
    index: int, seed: int = 0, split: str = "train", kind_mix: dict[str, float] | None = None
) -> tuple[SceneSpec, str, str]:
    """Example ``index`` of a split: (spec, caption, lang); about half 'en', half 'zh'."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    spec = sample_scene(rng, split, kind_mix)
    lang = "en" if rng.random() < 0.5 else "zh"
    return spec, caption(spec, lang, rng), lang


def make_dataset(
    num: int, seed: int = 0, split: str = "train", kind_mix: dict[str, float] | None = None
) -> ShapesData:
    """``num`` rendered training (or held-out) examples, deterministic in ``seed``."""
    specs, captions, langs = [], [], []
    for i in range(num):
        spec, text, lang = example(i, seed, split, kind_mix)
        specs.append(spec)
        captions.append(text)
        langs.append(lang)
    images = np.stack([render(s) for s in specs]) if specs else np.zeros((0, 64, 64, 3), np.uint8)
    return ShapesData(images, captions, langs, specs)


def eval_prompts(num_scenes: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """Held-out prompts: every scene captioned in both languages (2·num_scenes prompts).

    Each prompt is ``{"id", "caption", "lang", "spec"}`` with ``spec`` as JSON.
    """
    prompts = []
    for i in range(num_scenes):
        rng = np.random.default_rng([seed, _SPLIT_IDS["eval"], i])
        spec = sample_scene(rng, "eval")
        for lang in ("en", "zh"):
            text = caption(spec, lang, rng)
            prompts.append({"id": f"{i}-{lang}", "caption": text, "lang": lang, "spec": spec})
    return [{**p, "spec": p["spec"].to_json()} for p in prompts]


def load_prompts(path: str) -> list[dict[str, Any]]:
    """Read an ``eval_prompts.jsonl``; specs come back as ``SceneSpec``."""
    prompts = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                prompts.append({**d, "spec": SceneSpec.from_json(d["spec"])})
            except (KeyError, ValueError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: bad prompt record: {e}") from e
    return prompts
