"""Cascade: low-res images → stage-III high-res images on a tiny model and a tiny VQ-GAN."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from mars_jax import cascade, outputs, sample_flags
from mars_jax.data import image_ops
from mars_jax.eval import sr
from mars_jax.model import heads, params
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import images as images_lib
from mars_jax.sampling.images import TrainedModel
from mars_jax.sampling.options import SamplingConfig
from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.vq import images as vq_images
from mars_jax.vq import model as vq_model
from mars_jax.vq.config import VQConfig

TINY_VQ = VQConfig.tiny(codebook_size=16)
CFG = ModelConfig.tiny(compute_dtype="float32", nktp_k=4, image_logits="vision_only")


def _sr_run():
    @jax.jit
    def init(key):
        k_params, k_heads = jax.random.split(key)
        p = params.init_params(CFG, k_params)
        trainable = heads.extend_trainable(CFG, p["trainable"], k_heads)
        # Distinct vision embeddings and head columns (fresh ones are all nearly equal), so
        # the low-res codes condition the model and the argmax varies.
        k_embed, k_head = jax.random.split(k_heads)
        return p["frozen"], {
            **trainable,
            "vision_embed": jax.random.normal(k_embed, trainable["vision_embed"].shape),
            "vision_head": jax.random.normal(k_head, trainable["vision_head"].shape),
        }

    frozen, trainable = init(jax.random.key(0))
    return TrainedModel(
        model_cfg=CFG,
        frozen=frozen,
        trainable=trainable,
        vq_cfg=TINY_VQ,
        vq_params=vq_model.init(TINY_VQ, jax.random.key(1)),
        grids=[(8, 8)],
        text_len=8,
    )


def test_super_resolve_and_save(tmp_path):
    run = _sr_run()
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)  # resized to 8x8 inside
    low[1] = 255 - low[0]
    greedy = SamplingConfig(cfg_scale=1.0, temperature=0.0)
    prompts = ["a red circle", "a red circle"]
    high, infos = images_lib.super_resolve(run, prompts, low, (8, 8), (16, 16), greedy, 4, "exact")
    assert high.shape == (2, 16, 16, 3) and high.dtype == np.uint8
    assert infos[0].passes <= 64 and infos[0].codes == 64
    # Reference composition: resize as data preparation does, VQ-encode, resolution-prefixed
    # caption (`sr.model_producer`, the sr bench's producer), plain next-token greedy decoding:
    # exact mode must give the same codes.
    lo = np.stack([image_ops.resize_cover_crop(Image.fromarray(x), (8, 8)) for x in low])
    lo_codes = vq_images.encode_uint8(run.vq_params, TINY_VQ, lo)
    tok = load_tokenizer()
    greedy_k1 = sr.model_producer(
        run.frozen, run.trainable, CFG, TINY_VQ, tok.encode, 8, k=1, scfg=greedy
    )
    codes = greedy_k1(prompts, np.asarray(lo_codes), (8, 8), 0, 0)
    np.testing.assert_array_equal(high, vq_images.decode_uint8(run.vq_params, TINY_VQ, codes))
    sheet = outputs.save_pairs(str(tmp_path), prompts, low, high, cascade.SHEET_FILE)
    assert os.path.exists(sheet)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [cascade.SHEET_FILE, "prompts.txt", "low_000.png", "low_001.png"]
        + ["high_000.png", "high_001.png"]
    )
    with pytest.raises(ValueError, match="multiple of VQ factor"):
        images_lib.super_resolve(run, prompts, low, (8, 8), (15, 16), greedy, 4, "fast")


def test_parse_sizes():
    assert images_lib.parse_sizes("32x16:64x32") == ((16, 32), (32, 64))
    with pytest.raises(ValueError, match="--sr-sizes"):
        images_lib.parse_sizes("32x32")


def test_cascade_sampling_options_default_to_the_base_runs_sample_settings(tmp_path):
    base = tmp_path / "stage1"
    base.mkdir()
    sample = {"cfg_scale": 2.5, "temperature": 0.4, "top_k": 0, "top_p": 1.0}
    (base / "config.json").write_text(json.dumps({"sample": sample}))
    argv = [f"--base={base}", "--sr=unused", "--prompt=x", "--out=o"]
    args = sample_flags.fill_sampling_args(cascade.parse_args(argv), str(base))
    assert (args.cfg_scale, args.temperature) == (2.5, 0.4)
    args = sample_flags.fill_sampling_args(
        cascade.parse_args([*argv, "--temperature=1.0"]), str(base)
    )
    assert (args.cfg_scale, args.temperature) == (2.5, 1.0)  # what the user sets wins
