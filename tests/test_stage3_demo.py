"""Stage-III demo end to end, small: shards built on first use, a few training steps of the
stage-3 demo config from the base init, then `evaluate --bench=sr` on the run."""

import contextlib
import io
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import stage3
from mars_jax import evaluate
from mars_jax.demo import shards as demo_shards
from mars_jax.model.config import ModelConfig
from mars_jax.train_lib import base as base_lib
from mars_jax.train_lib import loop
from mars_jax.vq import checkpoint as vq_checkpoint
from mars_jax.vq import model as vq_model
from mars_jax.vq.config import VQConfig


def test_stage3_demo_shards_train_and_sr_eval(tmp_path):
    c = stage3.get_config("demo")
    assert c.base.init_from == "runs/demo_stage1"  # continues the README's stage-I demo run
    c.base.init_from = ""  # here: from the base init (no stage-I run to start from)
    assert c.base.demo_lm and c.base.checkpoint  # on the stage-I demo's base LLM
    assert c.sample.every_steps == 0  # the text→image preview does not apply to an SR run
    assert c.data.demo_scenes > 0 and c.model.nktp_k == 4

    shards = str(tmp_path / "stage3")
    demo_shards.ensure_demo_shards(shards, 3, 16)
    manifest = json.loads(open(os.path.join(shards, "manifest.json")).read())
    (bucket,) = manifest["buckets"].values()
    assert (bucket["lo_grid"], bucket["grid"]) == ([4, 4], [8, 8])
    assert (bucket["lo_image_hw"], bucket["image_hw"]) == ([32, 32], [64, 64])
    assert demo_shards.ensure_demo_shards(shards, 3, 16) == shards  # built: a no-op
    with pytest.raises(ValueError, match=r"data.demo_scenes=20, but .* hold 16 scenes"):
        demo_shards.ensure_demo_shards(shards, 3, 20)  # another count: a clear error
    with pytest.raises(ValueError, match=r"data.demo_kind_mix=.*were drawn with"):
        demo_shards.ensure_demo_shards(shards, 3, 16, kind_mix={"relation": 1})
    other_vq = str(tmp_path / "other_vq")  # another tokenizer: its decoder would misread them
    vq_checkpoint.save_vq(
        other_vq, VQConfig.tiny(), vq_model.init(VQConfig.tiny(), jax.random.key(0))
    )
    with pytest.raises(ValueError, match=r"hold the codes of VQ .*, but the demo's VQ"):
        demo_shards.ensure_demo_shards(shards, 3, 16, vq_dir=other_vq)
    with pytest.raises(ValueError, match=r"data.demo_vq=.* holds no VQ checkpoint"):
        demo_shards.ensure_demo_shards(shards, 3, 16, vq_dir=str(tmp_path))
    narrow = ModelConfig.from_dict(c.model).replace(image_pos_grid=(8, 4))
    with pytest.raises(ValueError, match=r"stage3 bucket .*8x8 code grid does not fit"):
        loop.check_shards_fit_model(shards, narrow)  # before compiling, naming the bucket

    c.base.checkpoint = str(tmp_path / "base_lm")
    base_lib.ensure_demo_base(c.base)  # what `train` does first: the shipped LLM as a base
    c.data.shards = shards
    c.data.demo_scenes = 16
    c.train.update(global_batch=4, num_steps=2)
    c.checkpoint.update(every_steps=2, async_save=False)
    workdir = str(tmp_path / "run")
    summary = loop.run(c, workdir, devices=jax.devices()[:1])  # one device compiles faster
    assert summary["step"] == 2
    rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert {"sr/ntp_loss", "sr/head4_loss"} <= set(rows[-1]) and np.isfinite(rows[-1]["loss"])

    out = io.StringIO()
    sheet = str(tmp_path / "sheet.png")
    args = ["--checkpoint", workdir, "--bench=sr", "--num_scenes=2", "--out", sheet]
    with contextlib.redirect_stdout(out):
        assert evaluate.main(args) == 0
    lines = out.getvalue().strip().splitlines()
    assert any(x.startswith("[fast] en (2 images)") for x in lines), lines
    assert any(x.startswith("[exact] zh (2 images)") for x in lines), lines
    pairs = dict(kv.split("=") for kv in lines[-1].split())
    assert list(pairs)[:2] == ["sr_psnr", "bicubic_psnr"]
    assert {"sr_exact_psnr", "sr_mse", "bicubic_mse", "vq_recon_psnr"} <= set(pairs)
    assert all(np.isfinite(float(v)) for v in pairs.values())
    # Two rows (one per English scene) of low-res | bicubic | stage III | truth, 2× scaled.
    assert np.asarray(Image.open(sheet)).shape == (2 * 130 + 2, 4 * 130 + 2, 3)
