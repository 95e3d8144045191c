"""The caption bench: the checker reads both languages and both templates; the bench scores
a perfect captioner 1.0 and a constant one low; `evaluate --bench=captions` runs on a run."""

import json
import os

import numpy as np
import pytest

from configs import stage1
from mars_jax import evaluate
from mars_jax.demo import caption_checker, shapes
from mars_jax.demo import shards as demo_shards
from mars_jax.eval import captions as caption_bench
from mars_jax.train_lib import loop


def _scenes(n=300):
    return [shapes.sample_scene(np.random.default_rng(i), "train") for i in range(n)]


def test_true_captions_pass_every_check_in_both_languages():
    for i, spec in enumerate(_scenes()):
        for lang in ("en", "zh"):
            for template in range(2):
                text = shapes.caption(spec, lang, np.random.default_rng([i, template]))
                verdict = caption_checker.check_caption(text, spec)
                assert all(v in (True, None) for v in verdict.values()), (text, verdict)
                assert caption_checker.language(text) == lang


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_wrong_colors_shapes_counts_and_relations_fail(lang):
    relation = next(s for s in _scenes() if s.kind == "relation")
    count = next(s for s in _scenes() if s.kind == "count")
    a, b = relation.objects
    swapped = shapes.SceneSpec("relation", (b, a), relation=relation.relation)
    text = shapes.caption(relation, lang)
    assert caption_checker.check_caption(text, swapped)["relation"] is False
    other = next(c for c in shapes.COLORS if c not in (a.color, b.color))
    recolored = shapes.SceneSpec(
        "relation", (shapes.ObjectSpec(other, a.shape, a.bbox), b), relation=relation.relation
    )
    assert caption_checker.check_caption(text, recolored)["color"] is False
    other_shape = next(s for s in shapes.SHAPES if s not in (a.shape, b.shape))
    reshaped = shapes.SceneSpec(
        "relation", (shapes.ObjectSpec(a.color, other_shape, a.bbox), b), relation=relation.relation
    )
    assert caption_checker.check_caption(text, reshaped)["shape"] is False
    more = shapes.SceneSpec("count", count.objects + count.objects[:1])
    if len(more.objects) <= 3:
        assert caption_checker.check_caption(shapes.caption(count, lang), more)["count"] is False


def test_bench_scores_perfect_and_constant_captioners():
    specs = caption_bench.held_out_scenes(16, 0)
    asked = []

    def perfect(images, seed, lang):
        assert len(images) == len(specs)
        asked.append(lang)
        return [shapes.caption(s, lang) for s in specs]

    result = caption_bench.run_caption_bench(perfect, 16, 0)
    assert asked == ["en", "zh"] and len(result["records"]) == 32
    assert all(v == 1.0 for v in result["all"].values())
    assert set(result["per_lang"]) == {"en", "zh"}
    # English captions asked for in Chinese are read as Chinese: no color word found.
    constant = caption_bench.run_caption_bench(lambda im, s, lang: ["a red circle"] * len(im), 16)
    assert constant["per_lang"]["en"]["color"] < 0.5 and constant["per_lang"]["zh"]["color"] == 0
    assert caption_bench.report_lines(constant)[-1].startswith("captions_color_acc=")


def test_caption_bench_cli(tmp_path, capsys):
    c = stage1.get_config("tiny")
    c.model.image_logits = "vision_only"
    c.data.grids = ((8, 8),)  # the demo VQ's 64-px scenes
    c.train.global_batch = 8
    c.train.num_steps = 1
    c.sample.vq = demo_shards.demo_vq_dir()
    workdir = str(tmp_path / "run")
    loop.run(c, workdir)
    out = str(tmp_path / "eval")
    args = ["--bench=captions", f"--checkpoint={workdir}", "--num-scenes=4", f"--out={out}"]
    assert evaluate.main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("captions_color_acc=") and "captions_shape_acc=" in last
    records = [json.loads(line) for line in open(os.path.join(out, "captions.jsonl"))]
    assert len(records) == 8 and all("color" in r for r in records)
    # A one-step model writes noise, but each caption stays in the language asked for.
    en = [r["caption"] for r in records if r["lang"] == "en"]
    zh = [r["caption"] for r in records if r["lang"] == "zh"]
    assert len(en) == len(zh) == 4 and any(en) and any(zh)
    assert all(t.isascii() and t.isprintable() for t in en)
    assert not any(ch.isascii() and ch.isalpha() for t in zh for ch in t)


def test_caption_bench_writes_captions_as_the_caption_command_does():
    """Greedy by default; `--temperature`, `--top_k`, `--top_p` reach the captioner."""
    parser = evaluate.build_parser()
    given = parser.parse_args(
        ["--bench=captions", "--checkpoint=x", "--temperature=0.7", "--top_k=5", "--candidates=4"]
    )
    scfg = evaluate.caption_sampling(given)
    assert (scfg.temperature, scfg.top_k, scfg.top_p, scfg.candidates) == (0.7, 5, 1.0, 4)
    unset = parser.parse_args(["--bench=captions", "--checkpoint=x"])
    unset.candidates = 16
    assert evaluate.caption_sampling(unset).temperature == 0.0
