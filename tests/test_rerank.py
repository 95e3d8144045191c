"""Best of N by the model's own captions: the score is the caption task's loss of the row,
and `generate_images` keeps, per prompt, the image of its best-scored candidate."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from PIL import Image

from configs import stage1
from mars_jax import caption, evaluate, generate, outputs
from mars_jax.demo import shards as demo_shards
from mars_jax.model import decoder, loss, params
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import images as images_lib
from mars_jax.sampling import options, rerank, t2i
from mars_jax.sampling.images import TrainedModel
from mars_jax.sampling.options import SamplingConfig
from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.tokens import formats
from mars_jax.train_lib import loop, validate
from mars_jax.vq import images as vq_images
from mars_jax.vq import model as vq_model
from mars_jax.vq.config import VQConfig

TINY_VQ = VQConfig.tiny(codebook_size=16)
CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32")
PROMPTS = ["a red circle", "两个蓝色的正方形", "a green triangle is left of a red square"]


_COMPILED_TASK_LOSS = jax.jit(loss.task_loss, static_argnums=(3, 4))


def _task_loss(frozen, trainable, batch, cfg):
    """The training loss of one task batch, compiled (its layout and config are static)."""
    arrays = {k: v for k, v in batch.items() if k != "layout"}
    layout = tuple(map(tuple, batch["layout"]))
    return _COMPILED_TASK_LOSS(frozen, trainable, arrays, layout, cfg)


@pytest.fixture(scope="module")
def model():
    p = params.init_params(CFG, jax.random.key(0))
    k_embed, k_head = jax.random.split(jax.random.key(1))
    trainable = p["trainable"]
    # Distinct code embeddings and head columns (fresh ones are nearly equal), so the image
    # changes the caption's likelihood and the sampled codes vary.
    trainable = {
        **trainable,
        "vision_embed": jax.random.normal(k_embed, trainable["vision_embed"].shape),
        "vision_head": jax.random.normal(k_head, trainable["vision_head"].shape),
    }
    return TrainedModel(
        frozen=p["frozen"],
        trainable=trainable,
        model_cfg=CFG,
        text_len=16,
        vq_cfg=TINY_VQ,
        vq_params=vq_model.init(TINY_VQ, jax.random.key(2)),
        grids=[(8, 8)],
    )


def test_score_is_minus_the_caption_task_loss_of_each_row(model):
    tok = load_tokenizer()
    captions = [tok.encode(p) for p in PROMPTS]
    codes = np.random.default_rng(0).integers(0, 16, (len(PROMPTS), 8, 8))
    got = rerank.caption_log_likelihood(model.frozen, model.trainable, CFG, codes, captions)
    for i, ids in enumerate(captions):
        # One row, its slot exactly long enough: the score must not depend on padding.
        batch = formats.caption_batch([codes[i]], [np.asarray(ids)], len(ids) + 1)
        summed, tokens, _ = _task_loss(model.frozen, model.trainable, batch, CFG)
        assert float(tokens) == len(ids) + 1  # the caption and its <eot>
        np.testing.assert_allclose(got[i], -float(summed), rtol=1e-5)
    # The image conditions the score: another image, another likelihood of the same caption.
    other = rerank.caption_log_likelihood(
        model.frozen, model.trainable, CFG, np.roll(codes, 1, axis=0), captions
    )
    assert np.all(np.abs(other - got) > 1e-3)


@pytest.mark.parametrize("image_logits", ["full", "vision_only"])
def test_image_score_is_minus_the_t2i_task_loss_of_each_row(model, image_logits):
    cfg = dataclasses.replace(CFG, image_logits=image_logits)
    tok = load_tokenizer()
    texts = [tok.encode(p) for p in PROMPTS]
    codes = np.random.default_rng(1).integers(0, 16, (len(PROMPTS), 8, 8))
    got = rerank.image_log_likelihood(model.frozen, model.trainable, cfg, codes, texts, 16)
    for i, ids in enumerate(texts):
        batch = formats.t2i_batch([np.asarray(ids)], [codes[i]], 16)
        summed, tokens, _ = _task_loss(model.frozen, model.trainable, batch, cfg)
        assert float(tokens) == 8 * 8 + 1  # the codes and <end>
        np.testing.assert_allclose(got[i], -float(summed), rtol=1e-5)
    other = rerank.image_log_likelihood(
        model.frozen, model.trainable, cfg, codes, np.roll(np.array(texts, object), 1), 16
    )
    assert np.all(np.abs(other - got) > 1e-3)  # the text conditions the score


def test_best_captions_maximise_both_directions(model):
    tok = load_tokenizer()
    codes = np.random.default_rng(2).integers(0, 16, (2, 8, 8))
    first = [tok.encode("a red circle"), tok.encode("一个红色的圆形")]
    more = [tok.encode(t) for t in ("two blue squares", "", "两个蓝色的正方形", "a")]
    got = images_lib.best_captions(model, codes, first, more, 3)
    for i, group in enumerate([[first[0], *more[:2]], [first[1], *more[2:]]]):
        image = np.repeat(codes[i : i + 1], 3, axis=0)
        args = (model.frozen, model.trainable, CFG, image)
        both = rerank.caption_log_likelihood(*args, group) + rerank.image_log_likelihood(
            *args, group, 16
        )
        assert got[i] == list(group[int(np.argmax(both))])
        assert len(set(both.round(3).tolist())) == 3


def test_best_of_keeps_each_prompts_highest_scored_candidate():
    codes = np.arange(6)[:, None, None] * np.ones((6, 2, 2), int)  # candidate k is all k
    scores = np.array([-3.0, -1.0, -2.0, 0.5, -7.0, 0.5])  # 2 prompts x 3 candidates
    kept, index = rerank.best_of(codes, scores, 3)
    assert index.tolist() == [1, 0]  # ties go to the first
    np.testing.assert_array_equal(kept[:, 0, 0], [1, 3])


def test_a_blank_candidate_is_kept_only_when_all_are():
    flat = np.full((2, 4, 4, 3), 40, np.uint8)
    flat[1, 0, 0] = 43  # std 0.5: still one flat color at max_std 1
    drawn = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    images = np.concatenate([flat, drawn])
    assert rerank.blank_images(images, 1.0).tolist() == [True, True, False, False]
    assert not rerank.blank_images(images, 0.0).any()
    codes = np.arange(6)[:, None, None] * np.ones((6, 2, 2), int)
    scores = np.array([0.5, -1.0, -2.0, 0.5, -7.0, 0.1])  # 2 prompts x 3 candidates
    blank = np.array([True, False, False, True, True, True])
    _, index = rerank.best_of(codes, scores, 3, blank)
    assert index.tolist() == [1, 0]  # the best non-blank one; all blank: the best one


def _reencoded(codes_Nxhxw: np.ndarray, model: TrainedModel) -> np.ndarray:
    """The VQ encoding of the codes' decoded images (the tiny VQ keeps the size)."""
    pixels = vq_images.decode_uint8(model.vq_params, TINY_VQ, codes_Nxhxw)
    return vq_images.encode_uint8(model.vq_params, TINY_VQ, pixels)


@pytest.mark.parametrize("batch_size, judge", [(6, "pixels"), (2, "pixels"), (6, "codes")])
def test_generate_images_keeps_the_best_of_the_candidates(model, batch_size, judge):
    """3 candidates per prompt; the kept image is the decode of the best-scored one, drawn
    with the call's seed (batch_size 6: all prompts in one call; 2: one prompt a call), the
    captioner reading the re-encoded decode (judge "pixels") or the drawn codes."""
    n, seed = 3, 5
    scfg = SamplingConfig(cfg_scale=2.0, temperature=1.0, candidates=n, judge=judge)
    got = images_lib.generate_images(model, PROMPTS, scfg, seed, batch_size=batch_size)
    assert got.shape[0] == len(PROMPTS) and got.dtype == np.uint8

    tok = load_tokenizer()
    per_call = max(1, batch_size // n)
    scfg = dataclasses.replace(scfg, codebook_size=TINY_VQ.codebook_size)
    weights = decoder.prepare(model.frozen, model.trainable, CFG, scfg.codebook_size, "float32")
    chose_other_than_first = False
    for start in range(0, len(PROMPTS), per_call):
        ids = [tok.encode(p) for p in PROMPTS[start : start + per_call] for _ in range(n)]
        rows = options.prompt_rows(start, len(ids) // n, n)
        codes = t2i.generate_codes(weights, None, CFG, ids, 16, (8, 8), scfg, seed, rows)
        seen = _reencoded(codes, model) if judge == "pixels" else codes
        scores = rerank.caption_log_likelihood(model.frozen, model.trainable, CFG, seen, ids)
        for j in range(len(ids) // n):
            group = scores[j * n : (j + 1) * n]
            assert len(set(group.round(4).tolist())) == n  # distinct candidates, distinct scores
            best = int(np.argmax(group))
            chose_other_than_first |= best != 0
            want = vq_images.decode_uint8(model.vq_params, TINY_VQ, codes[j * n + best][None])
            np.testing.assert_array_equal(got[start + j], want[0])
    assert chose_other_than_first  # the ranking, not the draw order, decided


def test_draws_depend_on_the_prompt_not_on_the_batch(model):
    """A prompt's candidates are the same whatever the batch size, and best of 3 draws best
    of 2's candidates and one more (each row has its own key, `options.row_keys`)."""
    draw = lambda n, batch_size: images_lib.draw_codes(
        model, PROMPTS, SamplingConfig(cfg_scale=2.0, candidates=n), 4, batch_size=batch_size
    )
    whole, apart = draw(3, 9), draw(3, 3)
    np.testing.assert_array_equal(whole.candidates, apart.candidates)
    np.testing.assert_allclose(whole.scores, apart.scores, rtol=1e-5)
    np.testing.assert_array_equal(whole.codes, apart.codes)
    np.testing.assert_array_equal(draw(2, 9).candidates, whole.candidates[:, :2])
    assert not np.array_equal(whole.candidates[:, 0], whole.candidates[:, 1])


@pytest.mark.parametrize("judge", ["pixels", "codes"])
def test_best_of_n_skips_candidates_flatter_than_blank_std(model, judge):
    """The same draws with and without the check; with it, candidates whose decode's pixel
    std is under `blank_std` (set here just above the kept image's of a prompt with a
    busier candidate) are flagged and kept only where all of a prompt's are."""
    # blank_redraws=0: the skip alone (the next test draws all-blank ones again).
    scfg = SamplingConfig(cfg_scale=2.0, candidates=3, judge=judge, blank_std=0.0, blank_redraws=0)
    plain = images_lib.draw_codes(model, PROMPTS, scfg, 4)
    assert plain.blank is None
    assert (plain.candidate_images is None) == (judge == "codes")  # no decode needed
    pixels = images_lib.candidate_images(model, plain)
    std_BxN = pixels.reshape(*pixels.shape[:2], -1).astype(np.float64).std(axis=-1)
    kept_std_B = std_BxN[np.arange(len(PROMPTS)), plain.kept_index]
    p = int(np.argmax(std_BxN.max(axis=1) - kept_std_B))  # its kept image is not its busiest
    threshold = float(kept_std_B[p]) + 1e-3
    assert (std_BxN[p] >= threshold).any()
    scfg = dataclasses.replace(scfg, blank_std=threshold)
    guarded = images_lib.draw_codes(model, PROMPTS, scfg, 4)
    np.testing.assert_array_equal(guarded.candidates, plain.candidates)
    np.testing.assert_array_equal(guarded.blank, std_BxN < threshold)
    want = np.where(
        (std_BxN < threshold) & (std_BxN >= threshold).any(axis=1, keepdims=True),
        -np.inf, guarded.scores,
    ).argmax(axis=1)  # fmt: skip
    np.testing.assert_array_equal(guarded.kept_index, want)
    assert guarded.kept_index[p] != plain.kept_index[p]
    kept = guarded.candidates[np.arange(len(PROMPTS)), want]
    np.testing.assert_array_equal(guarded.codes, kept)
    assert guarded.ranked_order[:, 0].tolist() == want.tolist()


def test_best_of_n_draws_the_next_n_where_all_are_blank(model):
    """Best of 2 with `blank_std` set just above the flattest first pair of candidates: that
    prompt's pair is all blank, so it draws its candidates 2 and 3 (best of 4's) in their
    place, and keeps the better-scored non-blank one; the other prompts keep their first
    pair. Without redraws the all-blank pair is kept."""
    best_of_4 = images_lib.draw_codes(
        model, PROMPTS, SamplingConfig(cfg_scale=2.0, candidates=4, blank_std=0.0), 4
    )
    pixels = images_lib.candidate_images(model, best_of_4)
    std_BxN = pixels.reshape(*pixels.shape[:2], -1).astype(np.float64).std(axis=-1)
    first_pair_B = std_BxN[:, :2].max(axis=1)
    p = int(np.argmin(first_pair_B))
    threshold = float(first_pair_B[p]) + 1e-3
    flat_BxN = std_BxN < threshold
    assert flat_BxN[p, :2].all() and not flat_BxN[:, :2].all(axis=1).all()
    want_pair_B = np.where(flat_BxN[:, :2].all(axis=1), 1, 0)  # one redraw: pair 0 or 1
    scfg = SamplingConfig(cfg_scale=2.0, candidates=2, blank_std=threshold, blank_redraws=1)
    drawn = images_lib.draw_codes(model, PROMPTS, scfg, 4)
    for b, pair in enumerate(want_pair_B):
        picked = slice(2 * pair, 2 * pair + 2)
        np.testing.assert_array_equal(drawn.candidates[b], best_of_4.candidates[b, picked])
        np.testing.assert_array_equal(drawn.blank[b], flat_BxN[b, picked])
        np.testing.assert_allclose(drawn.scores[b], best_of_4.scores[b, picked], rtol=1e-5)
    assert want_pair_B[p] == 1
    if not flat_BxN[p, 2:].all():  # a non-blank one among the new pair is kept
        assert not drawn.blank[p, drawn.kept_index[p]]
    kept_blank = images_lib.draw_codes(
        model, PROMPTS, dataclasses.replace(scfg, blank_redraws=0), 4
    )
    np.testing.assert_array_equal(kept_blank.candidates, best_of_4.candidates[:, :2])
    assert kept_blank.blank[p].all()


def test_one_image_per_prompt_draws_a_blank_one_again(model):
    """With one image per prompt, a draw whose decode is flatter than `blank_std` (set here
    at the first draws' median) is replaced by the prompt's next candidate, the one best of
    N draws next, up to `blank_redraws` times; the last is kept where all are flat."""
    best_of_4 = images_lib.draw_codes(
        model, PROMPTS, SamplingConfig(cfg_scale=2.0, candidates=4, blank_std=0.0), 4
    )
    pixels = images_lib.candidate_images(model, best_of_4)
    std_BxN = pixels.reshape(*pixels.shape[:2], -1).astype(np.float64).std(axis=-1)
    threshold = float(np.median(std_BxN[:, 0])) + 1e-3
    flat_BxN = std_BxN < threshold
    assert flat_BxN[:, 0].any() and not flat_BxN[:, 0].all()
    want_B = np.where(flat_BxN.all(axis=1), 3, np.argmin(flat_BxN, axis=1))
    assert (want_B > 0).any()
    rows = np.arange(len(PROMPTS))
    for batch_size in (16, 2):
        scfg = SamplingConfig(cfg_scale=2.0, blank_std=threshold, blank_redraws=3)
        one = images_lib.draw_codes(model, PROMPTS, scfg, 4, batch_size=batch_size)
        np.testing.assert_array_equal(one.codes, best_of_4.candidates[rows, want_B])
        np.testing.assert_array_equal(images_lib.kept_images(model, one), pixels[rows, want_B])
    kept_first = images_lib.draw_codes(
        model, PROMPTS, dataclasses.replace(scfg, blank_redraws=0), 4
    )
    np.testing.assert_array_equal(kept_first.codes, best_of_4.candidates[:, 0])
    assert kept_first.images is None  # nothing checked, nothing decoded
    with pytest.raises(ValueError, match="blank_redraws must be >= 0"):
        SamplingConfig(blank_redraws=-1)


def test_the_pixel_judge_scores_what_the_encoder_sees_of_each_candidate(model):
    """The same candidates under both judges; "pixels" scores their re-encoded decodes,
    which differ from the drawn codes, "codes" the drawn codes."""
    ids = [load_tokenizer().encode(p) for p in PROMPTS[:2] for _ in range(3)]
    drawn = {
        judge: images_lib.draw_codes(
            model, PROMPTS[:2], SamplingConfig(cfg_scale=2.0, candidates=3, judge=judge), 7
        )
        for judge in ("pixels", "codes")
    }
    np.testing.assert_array_equal(drawn["pixels"].candidates, drawn["codes"].candidates)
    codes = drawn["codes"].candidates.reshape(-1, 8, 8)
    seen = _reencoded(codes, model)
    assert (seen != codes).mean() > 0.1
    args = (model.frozen, model.trainable, CFG)
    np.testing.assert_allclose(
        drawn["pixels"].scores.ravel(), rerank.caption_log_likelihood(*args, seen, ids), rtol=1e-5
    )
    np.testing.assert_allclose(
        drawn["codes"].scores.ravel(), rerank.caption_log_likelihood(*args, codes, ids), rtol=1e-5
    )
    assert not np.allclose(drawn["pixels"].scores, drawn["codes"].scores, rtol=1e-3)


def test_one_candidate_is_plain_sampling(model):
    scfg = SamplingConfig(cfg_scale=2.0, temperature=1.0)
    got = images_lib.generate_images(model, PROMPTS, scfg, seed=3)
    ids = [load_tokenizer().encode(p) for p in PROMPTS]
    scfg = dataclasses.replace(scfg, codebook_size=TINY_VQ.codebook_size)
    codes = t2i.generate_codes(model.frozen, model.trainable, CFG, ids, 16, (8, 8), scfg, 3)
    want = vq_images.decode_uint8(model.vq_params, TINY_VQ, codes)
    np.testing.assert_array_equal(got, want)


def test_candidates_must_be_positive_and_the_judge_known():
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        SamplingConfig(candidates=0)
    with pytest.raises(ValueError, match="judge must be one of"):
        SamplingConfig(judge="clip")
    assert validate.JUDGES == options.JUDGES  # the config check's JAX-free copy


@pytest.fixture(scope="module")
def captioning_run(tmp_path_factory):
    """A 2-step stage-I run (synthetic data, caption rows in every batch), demo VQ."""
    c = stage1.get_config("tiny")
    c.model.image_logits = "vision_only"
    c.train.global_batch = 8
    c.train.num_steps = 2
    c.sample.vq = demo_shards.demo_vq_dir()
    assert c.data.caption_ratio > 0
    workdir = str(tmp_path_factory.mktemp("rerank") / "run")
    loop.run(c, workdir)
    return workdir


def test_caption_cli_with_candidates(captioning_run, tmp_path, capsys):
    files = []
    for i, color in enumerate([(200, 30, 30), (30, 30, 200)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((64, 64, 3), color, np.uint8)).save(path)
        files.append(str(path))
    argv = [f"--checkpoint={captioning_run}", "--candidates=3", "--lang=en", "--max_tokens=8"]
    assert caption.main(argv + [f"--image={f}" for f in files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == files
    # Drawn captions: each image's depends on its place in the list, not on --batch_size.
    argv += ["--temperature=1.0", "--seed=3"] + [f"--image={f}" for f in files]
    printed = []
    for batch_size in (2, 1):
        assert caption.main(argv + [f"--batch_size={batch_size}"]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]


def test_generate_writes_the_candidates_best_first(captioning_run, tmp_path):
    out = tmp_path / "samples"
    prompts = ["a red circle", "两个蓝色的正方形"]
    argv = [f"--checkpoint={captioning_run}", f"--out={out}", "--candidates=3", "--seed=1"]
    assert generate.main(argv + [f"--prompt={p}" for p in prompts]) == 0
    records = [json.loads(line) for line in (out / outputs.CANDIDATES_FILE).open()]
    assert [r["prompt"] for r in records] == prompts
    for r in records:
        scores = r["caption_log_likelihood"]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    # Row i of the sheet starts with the kept image, 0000.png, …
    sheet = np.asarray(Image.open(out / outputs.CANDIDATES_SHEET_FILE))
    for i in range(len(prompts)):
        kept = np.asarray(Image.open(out / f"{i:04d}.png"))
        side = kept.shape[0] * outputs.sheet_scale(kept.shape[0])
        y = 2 + i * (side + 2)
        tile = sheet[y : y + side : side // kept.shape[0], 2 : 2 + side : side // kept.shape[0]]
        np.testing.assert_array_equal(tile, kept)
    assert sheet.shape[1] == 3 * (side + 2) + 2  # … and holds its 3 candidates, which differ
    row = sheet[2 : 2 + side]
    tiles = [row[:, 2 + k * (side + 2) : 2 + k * (side + 2) + side] for k in range(3)]
    assert not all(np.array_equal(tiles[0], t) for t in tiles[1:])


def test_evaluate_checks_every_candidate_and_keeps_the_same_images(
    captioning_run, tmp_path, capsys
):
    """`--check_candidates` scores the very images plain best of N keeps, and checks the
    candidates behind them: the kept one is one of them, verdict for verdict."""
    argv = [f"--checkpoint={captioning_run}", "--bench=shapes", "--num_scenes=2", "--candidates=3"]
    saved = {}
    for name, extra in (("plain", []), ("checked", ["--check_candidates"])):
        out = tmp_path / name
        assert evaluate.main(argv + [f"--out={out}", *extra]) == 0
        with (out / evaluate.VERDICTS_FILE).open(encoding="utf-8") as f:
            saved[name] = json.load(f)["prompts"]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3].startswith("shapes_right_kept=")
    right = dict(kv.split("=") for kv in lines[-3].split())
    assert float(right["shapes_right_kept"]) <= float(right["shapes_right_any_candidate"])
    checks = ("color", "shape", "blank")
    for plain, checked in zip(saved["plain"], saved["checked"], strict=True):
        assert [plain[k] for k in checks] == [checked[k] for k in checks]
        assert len(checked["candidates"]) == 3
        kept = checked["candidates"][checked["kept"]]
        assert [kept[k] for k in checks] == [checked[k] for k in checks]
