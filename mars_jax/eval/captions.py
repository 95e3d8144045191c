"""The caption bench: held-out demo scenes → the model's captions → named attributes.

Scenes come from the held-out split (attribute combinations no training scene has); each is
rendered, captioned by the model (image → text), and the caption is checked by
`demo.caption_checker` in the language the model wrote it in. Reports accuracies per
attribute over all captions and per language, and the share of each language.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mars_jax.demo import caption_checker, shapes

Captioner = Callable[[np.ndarray, int], Sequence[str]]  # (images uint8 [N,H,W,3], seed)


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
    captioner: Captioner, num_scenes: int = 32, seed: int = 0, sample_seed: int = 0
) -> dict[str, Any]:
    """Caption the held-out scenes; `{"all": accuracies, "per_lang": {...}, "records": [...]}`."""
    specs = held_out_scenes(num_scenes, seed)
    images = np.stack([shapes.render(s) for s in specs])
    captions = list(captioner(images, sample_seed))
    if len(captions) != len(specs):
        raise ValueError(f"captioner returned {len(captions)} captions for {len(specs)} images")
    records = []
    for spec, text in zip(specs, captions, strict=True):
        verdict = caption_checker.check_caption(text, spec)
        records.append({"caption": text, "lang": caption_checker.language(text), **verdict})
    per_lang = {
        lang: accuracies([r for r in records if r["lang"] == lang])
        for lang in sorted({r["lang"] for r in records})
    }
    share = {lang: sum(r["lang"] == lang for r in records) / len(records) for lang in per_lang}
    return {"all": accuracies(records), "per_lang": per_lang, "share": share, "records": records}


def report_lines(result: dict[str, Any]) -> list[str]:
    """Per-language lines, then the summary line (`captions_color_acc=... ...` last)."""
    lines = []
    for lang, acc in result["per_lang"].items():
        values = " ".join(f"captions_{k}_acc[{lang}]={v:.4f}" for k, v in acc.items())
        lines.append(f"{values} share[{lang}]={result['share'][lang]:.2f}")
    acc = result["all"]
    others = " ".join(
        f"captions_{k}_acc={v:.4f}" for k, v in acc.items() if k not in ("color", "shape")
    )
    if others:
        lines.append(others)
    lines.append(f"captions_color_acc={acc['color']:.4f} captions_shape_acc={acc['shape']:.4f}")
    return lines
