"""Does a caption name what a demo scene shows? The text-side twin of `checker.py`.

A caption is read in the language it is written in (Chinese if it holds CJK characters).
Checks, each True / False, or None where the scene kind has no such attribute:

- `color`: the set of color words equals the scene's colors;
- `shape`: the set of shape words equals the scene's shapes;
- `count` (count scenes): the right number word (`two`, `两个`);
- `relation` (two-object scenes): the scene's relation, said of the right object (the
  templates of `shapes.caption`: "A left of B", "A is left of B"; "A在B的左边",
  "B的左边是A").
"""

from __future__ import annotations

import re

from mars_jax.demo import shapes

CHECKS = ("color", "shape", "count", "relation")


def language(text: str) -> str:
    return "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en"


def _found(text: str, words: dict[str, list[str]], lang: str) -> list[tuple[int, str]]:
    """(position, key) of every mention of each key's words, in text order."""
    out = []
    for key, forms in words.items():
        for form in forms:
            pattern = re.escape(form) if lang == "zh" else rf"\b{re.escape(form)}\b"
            out += [(m.start(), key) for m in re.finditer(pattern, text)]
    return sorted(out)


def _color_words(lang: str) -> dict[str, list[str]]:
    if lang == "zh":
        return {c: [shapes.COLORS_ZH[c]] for c in shapes.COLORS}
    return {c: [c] for c in shapes.COLORS}


def _shape_words(lang: str) -> dict[str, list[str]]:
    if lang == "zh":
        return {s: [shapes.SHAPES_ZH[s]] for s in shapes.SHAPES}
    return {s: [s, shapes.SHAPES_PLURAL[s]] for s in shapes.SHAPES}


def check_caption(
    text: str, spec: shapes.SceneSpec, lang: str | None = None
) -> dict[str, bool | None]:
    """Each check of `CHECKS` for `text` as a caption of `spec`, read as `lang` (default:
    the language the text is in)."""
    lang = lang or language(text)
    low = text.lower()
    colors = _found(low, _color_words(lang), lang)
    found_shapes = _found(low, _shape_words(lang), lang)
    verdict: dict[str, bool | None] = {
        "color": {c for _, c in colors} == {o.color for o in spec.objects},
        "shape": {s for _, s in found_shapes} == {o.shape for o in spec.objects},
        "count": None,
        "relation": None,
    }
    if spec.kind == "count":
        word = shapes.COUNTS_ZH[spec.count] + "个" if lang == "zh" else shapes.COUNTS_EN[spec.count]
        pattern = re.escape(word) if lang == "zh" else rf"\b{word}\b"
        verdict["count"] = re.search(pattern, low) is not None
    if spec.kind == "relation":
        verdict["relation"] = _relation_holds(low, lang, spec, colors)
    return verdict


def _relation_holds(text: str, lang: str, spec: shapes.SceneSpec, colors) -> bool:
    """The scene's relation word, with objects[0] as its subject (colors tell them apart)."""
    first, second = spec.objects[0].color, spec.objects[1].color
    if lang == "zh":
        word = shapes.RELATIONS_ZH[spec.relation]
        at = text.find("的" + word)
        if at < 0:
            return False
        before = [c for p, c in colors if p < at]
        after = [c for p, c in colors if p > at]
        if text.startswith("是", at + 1 + len(word)):  # "B的左边是A"
            return before[-1:] == [second] and after[:1] == [first]
        return before[:1] == [first] and before[-1:] == [second]  # "A在B的左边"
    phrase = shapes.RELATIONS_EN[spec.relation]
    at = text.find(phrase)
    if at < 0:
        return False
    before = [c for p, c in colors if p < at]
    after = [c for p, c in colors if p > at]
    return before[-1:] == [first] and after[:1] == [second]
