"""In-training samples: images for config.sample.prompts land in the workdir and TensorBoard."""

import glob
import os

import jax
from PIL import Image
from test_train_loop import tiny_config

from mars_jax.model.config import ModelConfig
from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.train_lib import loop, preview
from mars_jax.vq import checkpoint as vq_checkpoint
from mars_jax.vq import model as vq_model
from mars_jax.vq.config import VQConfig


def test_samples_every_n_steps_and_at_the_end(tmp_path):
    vq_cfg = VQConfig.tiny(codebook_size=16)
    vq_checkpoint.save_vq(str(tmp_path / "vq"), vq_cfg, vq_model.init(vq_cfg, jax.random.key(0)))
    c = tiny_config()
    c.train.num_steps = 3
    c.sample.every_steps = 2
    c.sample.prompts = ["a red circle on the left", "一个蓝色的正方形"]
    c.sample.vq = str(tmp_path / "vq")
    workdir = tmp_path / "run"
    loop.run(c, str(workdir))
    steps = sorted(os.path.basename(d) for d in glob.glob(str(workdir / "samples" / "step_*")))
    assert steps == ["step_0000002", "step_0000003"]  # every 2 steps, and the last one
    last = workdir / "samples" / "step_0000003"
    side = vq_cfg.resolution
    for i in range(2):
        assert Image.open(last / f"{i:04d}.png").size == (side, side)
    assert "一个蓝色的正方形" in (last / "prompts.txt").read_text(encoding="utf-8")
    events = glob.glob(str(workdir / "tensorboard" / "events.*"))
    assert events and any(b"samples" in open(e, "rb").read() for e in events)


def test_no_prompts_no_samples(tmp_path):
    c = tiny_config()
    c.train.num_steps = 1
    loop.run(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "samples")


def test_stage2_preview_prompts_carry_the_resolution(tmp_path):
    vq_cfg = VQConfig.tiny(codebook_size=16)
    vq_checkpoint.save_vq(str(tmp_path / "vq"), vq_cfg, vq_model.init(vq_cfg, jax.random.key(0)))
    c = tiny_config()  # stage II
    c.sample.every_steps = 1
    c.sample.prompts = ["a red circle"]
    c.sample.vq = str(tmp_path / "vq")
    p = preview.Previewer(c, ModelConfig.from_dict(c.model))
    side = vq_cfg.resolution
    assert p.ids == [load_tokenizer().encode(f"{side}x{side} a red circle")]
