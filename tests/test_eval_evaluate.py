"""The evaluator's scoring half, with image producers that stand in for the sampler.

A producer that renders the ground-truth scene of each caption must score ≈ 1; one that
returns noise must score low. This tests the evaluator (prompts, checker, aggregation,
per-language report, files), not a model.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mars_jax import evaluate
from mars_jax.eval import features

PROMPTS = evaluate.load_eval_prompts(None, num_scenes=8, seed=0)


def ground_truth_producer(prompts):
    by_caption = {p["caption"]: p["spec"] for p in prompts}
    seeds = []

    def produce(captions, seed):
        seeds.append(seed)
        return np.stack([evaluate.shapes.render(by_caption[c]) for c in captions])

    produce.seeds = seeds
    return produce


def noise_producer(captions, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (len(captions), 64, 64, 3), dtype=np.uint8)


def test_ground_truth_scores_one_with_per_language_lines_and_files(tmp_path):
    lines = []
    produce = ground_truth_producer(PROMPTS)
    out = str(tmp_path / "eval")
    result = evaluate.evaluate_shapes(PROMPTS, produce, 2, seed=7, out_dir=out, log=lines.append)
    assert produce.seeds == [7, 8]
    assert all(v == 1.0 for v in result["all"].values()), result["all"]
    assert lines[-1] == "shapes_color_acc=1.0000 shapes_shape_acc=1.0000"
    assert lines[-2] == "shapes_blank_images=0" and result["blank"] == 0
    assert lines[0].startswith("shapes_color_acc[en]=1.0000 shapes_shape_acc[en]=1.0000")
    assert lines[1].startswith("shapes_color_acc[zh]=1.0000")
    sheet = Image.open(os.path.join(out, evaluate.SHEET_FILE))
    assert sheet.size[0] > 8 * 128 and sheet.size[1] > 4 * 128  # 32 images, 8 a row, ×2
    with open(os.path.join(out, evaluate.VERDICTS_FILE), encoding="utf-8") as f:
        saved = json.load(f)
    assert len(saved["prompts"]) == 2 * len(PROMPTS)
    assert saved["prompts"][1]["lang"] == "zh" and saved["prompts"][1]["color"] is True
    assert saved["blank_images"] == 0 and saved["prompts"][1]["blank"] is False


def test_blank_images_are_counted():
    def every_third_blank(captions, seed):
        images = ground_truth_producer(PROMPTS)(captions, seed)
        images[::3] = evaluate.shapes.BACKGROUND_RGB
        return images

    lines = []
    result = evaluate.evaluate_shapes(PROMPTS, every_third_blank, log=lines.append)
    n = len(range(0, len(PROMPTS), 3))
    assert result["blank"] == n and lines[-2] == f"shapes_blank_images={n}"
    assert [v["blank"] for v in result["verdicts"]] == [i % 3 == 0 for i in range(len(PROMPTS))]
    assert lines[-1].startswith("shapes_color_acc=")


def test_noise_scores_low():
    lines = []
    result = evaluate.evaluate_shapes(PROMPTS, noise_producer, log=lines.append)
    assert result["all"]["color"] <= 0.1 and result["all"]["shape"] <= 0.1
    assert set(result["per_lang"]) == {"en", "zh"}
    assert lines[-1].startswith("shapes_color_acc=0.")


def test_one_language_wrong_shows_in_its_own_line():
    gt = ground_truth_producer(PROMPTS)
    zh = {p["caption"] for p in PROMPTS if p["lang"] == "zh"}

    def english_only(captions, seed):
        images = gt(captions, seed)
        noise = noise_producer(captions, seed)
        return np.where(np.array([c in zh for c in captions])[:, None, None, None], noise, images)

    result = evaluate.evaluate_shapes(PROMPTS, english_only, log=lambda _: None)
    assert result["per_lang"]["en"]["color"] == 1.0
    assert result["per_lang"]["zh"]["color"] <= 0.1
    assert 0.4 <= result["all"]["color"] <= 0.6


def test_every_candidate_is_checked_and_the_kept_one_scored(tmp_path):
    """Of 3 candidates per prompt only the middle one is right and the last is blank; the
    judge keeps the first (noise) for even rows and the right one for odd rows."""
    gt = ground_truth_producer(PROMPTS)

    def candidates(captions, seed):
        right = gt(captions, seed)
        noise = noise_producer(captions, seed)
        every = np.stack([noise, right, np.zeros_like(noise)], axis=1)
        return every, np.arange(len(captions)) % 2

    lines = []
    out = str(tmp_path / "eval")
    result = evaluate.evaluate_shapes(
        PROMPTS, None, 1, seed=3, out_dir=out, log=lines.append, candidates=candidates
    )
    judged = result["candidates"]
    assert judged["right_any_candidate"] == 1.0
    assert judged["right_kept"] == 0.5 and judged["right_mean_candidate"] == pytest.approx(1 / 3)
    assert judged["blank_candidates"] == pytest.approx(1 / 3)
    assert lines[-3] == (
        "shapes_right_kept=0.5000 shapes_right_any_candidate=1.0000 "
        "shapes_right_mean_candidate=0.3333 shapes_blank_candidates=0.3333"
    )
    # The kept images are what the usual lines score: the odd (right) half.
    assert [v["color"] for v in result["verdicts"]] == [i % 2 == 1 for i in range(len(PROMPTS))]
    with open(os.path.join(out, evaluate.VERDICTS_FILE), encoding="utf-8") as f:
        saved = json.load(f)["prompts"]
    assert [r["kept"] for r in saved[:3]] == [0, 1, 0]
    assert [c["shape"] for c in saved[0]["candidates"]] == [False, True, False]
    with pytest.raises(ValueError, match="candidate producer"):
        evaluate.evaluate_shapes(
            PROMPTS, None, log=lambda _: None, candidates=lambda c, s: (gt(c, s), np.zeros(len(c)))
        )


def test_bad_producer_output_is_a_clear_error():
    with pytest.raises(ValueError, match="uint8"):
        evaluate.evaluate_shapes(
            PROMPTS, lambda c, s: np.zeros((len(c), 64, 64, 3)), log=lambda _: None
        )


def test_fid_bench():
    lines = []
    ex = features.PaletteFeatures()
    gt = evaluate.evaluate_fid(PROMPTS, ground_truth_producer(PROMPTS), ex, log=lines.append)
    noise = evaluate.evaluate_fid(PROMPTS, noise_producer, ex, log=lambda _: None)
    assert gt["fid"] < 1e-6 and gt["clip_score"] > 85
    assert noise["fid"] > 0.1 and noise["clip_score"] < gt["clip_score"] - 20
    assert lines[-1].startswith("fid=") and " clip_score=" in lines[-1]
