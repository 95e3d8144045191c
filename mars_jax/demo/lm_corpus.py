"""The text the demo LLM is pretrained on: bilingual sentences about colored shapes.

A real LLM has read about far more than its image data shows, so this corpus covers every
attribute combination in text, the held-out ones included (the images of held-out
combinations stay out of training; only their words appear here):

- ``caption``: captions of random scenes of every kind, both templates, English and Chinese;
- ``frame``: each color × shape pair, count and relation in other sentence frames ("the
  circle is red", "红色的圆形", "three circles, all of them blue"), so a word's meaning does
  not hang on one template;
- ``pair``: an English caption followed by its Chinese caption (or the reverse), which ties
  the two languages' words for one scene together.

Each sentence ``i`` is drawn from its own generator seeded by ``(seed, i)``.
"""

from __future__ import annotations

import numpy as np

from mars_jax.demo import shapes

KINDS = ("caption", "frame", "pair")
KIND_PROBS = (0.45, 0.35, 0.2)
# Scene kinds for the corpus's captions: every combination, held-out ones included.
_SCENE_KINDS = ("single", "count", "relation")


def random_scene(rng: np.random.Generator) -> shapes.SceneSpec:
    """A scene of any attribute combination (train or held-out split alike)."""
    split = "eval" if rng.random() < 0.25 else "train"  # held-out combos are rarer at random
    return shapes.sample_scene(rng, split)


def _frame_en(rng: np.random.Generator) -> str:
    color = str(rng.choice(list(shapes.COLORS)))
    shape = str(rng.choice(shapes.SHAPES))
    plural = shapes.SHAPES_PLURAL[shape]
    n = shapes.COUNTS_EN[int(rng.choice((2, 3)))]
    other = str(rng.choice(list(shapes.COLORS)))
    rel = shapes.RELATIONS_EN[str(rng.choice(shapes.RELATIONS))]
    frames = (
        f"the {shape} is {color}",
        f"a {shape} that is {color}",
        f"this {color} shape is a {shape}",
        f"{color} {plural}",
        f"{n} {plural}, all of them {color}",
        f"the {color} {shape} is {rel} the {other} one",
        f"a {shape} colored {color}",
        f"the color of the {shape} is {color}",
    )
    return frames[int(rng.integers(len(frames)))]


def _frame_zh(rng: np.random.Generator) -> str:
    color = shapes.COLORS_ZH[str(rng.choice(list(shapes.COLORS)))]
    shape = shapes.SHAPES_ZH[str(rng.choice(shapes.SHAPES))]
    n = shapes.COUNTS_ZH[int(rng.choice((2, 3)))]
    other = shapes.COLORS_ZH[str(rng.choice(list(shapes.COLORS)))]
    rel = shapes.RELATIONS_ZH[str(rng.choice(shapes.RELATIONS))]
    frames = (
        f"这个{shape}是{color}的",
        f"{color}的{shape}",
        f"这个{color}的图形是{shape}",
        f"{n}个{shape}都是{color}的",
        f"{color}的{shape}在{other}图形的{rel}",
        f"{shape}的颜色是{color}",
    )
    return frames[int(rng.integers(len(frames)))]


def sentence(index: int, seed: int = 0) -> str:
    """Sentence ``index`` of the corpus (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, index])
    kind = KINDS[int(rng.choice(len(KINDS), p=KIND_PROBS))]
    lang = "en" if rng.random() < 0.5 else "zh"
    if kind == "frame":
        return _frame_en(rng) if lang == "en" else _frame_zh(rng)
    spec = random_scene(rng)
    if kind == "caption":
        return shapes.caption(spec, lang, rng)
    other = "zh" if lang == "en" else "en"
    return f"{shapes.caption(spec, lang, rng)} = {shapes.caption(spec, other, rng)}"


def all_words() -> list[str]:
    """Every word the demo's prompts use, for checking that the corpus covers them."""
    words = [*shapes.COLORS, *shapes.SHAPES, *shapes.SHAPES_PLURAL.values()]
    words += [*shapes.COLORS_ZH.values(), *shapes.SHAPES_ZH.values()]
    return words
