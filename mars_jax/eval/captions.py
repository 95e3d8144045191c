"""The caption bench: held-out demo scenes → the model's captions → named attributes.

Scenes come from the held-out split (attribute combinations no training scene has); each is
rendered and captioned by the model (image → text) once in English and once in Chinese (the
caption's tokens restricted to that language, `text/languages.py`), and each caption is
checked by `demo.caption_checker` in its language. Reports accuracies per attribute over all
captions and per language.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mars_jax.demo import caption_checker, shapes
from mars_jax.text import languages

# (images uint8 [N, H, W, 3], seed, language) -> one caption per image
Captioner = Callable[[np.ndarray, int, str], Sequence[str]]


def held_out_scenes(num_scenes: int, seed: int) -> list[shapes.SceneSpec]:
    """The scenes of the shapes bench's held-out prompts (one per scene)."""
    prompts = shapes.eval_prompts(num_scenes, seed)
    return [shapes.SceneSpec.from_json(p["spec"]) for p in prompts if p["lang"] == "en"]


def accuracies(verdicts: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean of each check over the captions that have it (None: not applicable)."""
    out = {}
    for name in caption_checker.CHECKS:
        values = [v[name] for v in verdicts if v[name] is not None]
        if values:
            out[name] = float(np.mean(values))
    return out


def run_caption_bench(
    captioner: Captioner,
    num_scenes: int = 32,
    seed: int = 0,
    sample_seed: int = 0,
    langs: Sequence[str] = languages.LANGUAGES,
) -> dict[str, Any]:
    """Caption the held-out scenes in each language of `langs`;
    `{"all": accuracies, "per_lang": {lang: accuracies}, "records": [...]}`."""
    specs = held_out_scenes(num_scenes, seed)
    images = np.stack([shapes.render(s) for s in specs])
    records = []
    for lang in langs:
        captions = list(captioner(images, sample_seed, lang))
        if len(captions) != len(specs):
            raise ValueError(f"captioner returned {len(captions)} captions for {len(specs)} images")
        for index, (spec, text) in enumerate(zip(specs, captions, strict=True)):
            verdict = caption_checker.check_caption(text, spec, lang)
            records.append({"index": index, "caption": text, "lang": lang, **verdict})
    per_lang = {lang: accuracies([r for r in records if r["lang"] == lang]) for lang in langs}
    return {"all": accuracies(records), "per_lang": per_lang, "records": records}


def report_lines(result: dict[str, Any]) -> list[str]:
    """Per-language lines, then the summary line (`captions_color_acc=... ...` last)."""
    lines = []
    for lang, acc in result["per_lang"].items():
        values = " ".join(f"captions_{k}_acc[{lang}]={v:.4f}" for k, v in acc.items())
        lines.append(values)
    acc = result["all"]
    others = " ".join(
        f"captions_{k}_acc={v:.4f}" for k, v in acc.items() if k not in ("color", "shape")
    )
    if others:
        lines.append(others)
    lines.append(f"captions_color_acc={acc['color']:.4f} captions_shape_acc={acc['shape']:.4f}")
    return lines
