"""A trained run is usable elsewhere: step dirs, `--step`, exported bundles without the run,
the training prompt format, and the CLI from another directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import stage2
from mars_jax import export, runs
from mars_jax.demo import shards as demo_shards
from mars_jax.sampling import images as images_lib
from mars_jax.sampling.options import SamplingConfig
from mars_jax.train_lib import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCFG = SamplingConfig(cfg_scale=2.0, temperature=1.0, top_k=20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step stage-II run (synthetic data) that names the shipped demo VQ."""
    root = tmp_path_factory.mktemp("export")
    c = stage2.get_config("tiny")
    c.model.image_logits = "vision_only"
    c.train.global_batch = 8
    c.train.num_steps = 2
    c.checkpoint.every_steps = 1
    c.sample.vq = demo_shards.demo_vq_dir()
    workdir = str(root / "run")
    loop.run(c, workdir)
    return root, workdir


def _codes(model, prompts=("a red circle", "两个蓝色方块")):
    return images_lib.generate_images(model, list(prompts), SCFG, seed=5)


def test_step_dir_and_step_flag_name_the_same_checkpoint(trained):
    _, workdir = trained
    assert runs.locate(os.path.join(workdir, "checkpoints", "1")).step == 1
    assert runs.locate(workdir, 1).step == 1
    first = runs.load_run(os.path.join(workdir, "checkpoints", "1"))
    last = runs.load_run(workdir)
    assert (first.step, last.step) == (1, 2)
    assert not np.array_equal(
        np.asarray(first.trainable["vision_head"]), np.asarray(last.trainable["vision_head"])
    )
    with pytest.raises(FileNotFoundError, match="no step 7"):
        runs.load_run(workdir, 7)
    with pytest.raises(FileNotFoundError, match="not a training run"):
        runs.locate(str(trained[0]))


def test_bundle_samples_what_the_run_samples_without_the_run(trained, tmp_path, monkeypatch):
    root, workdir = trained
    run = runs.load_run(workdir)
    want = _codes(run)
    copy = tmp_path / "run_copy"
    shutil.copytree(workdir, copy)
    bundle = str(tmp_path / "bundle")
    export.export(str(copy), bundle)
    shutil.rmtree(copy)  # the run is gone; the bundle stands alone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = runs.load_run(bundle)
    assert (model.step, model.stage, model.resolution_prefix) == (2, 2, True)
    np.testing.assert_array_equal(_codes(model), want)
    card = open(os.path.join(bundle, "model_card.md"), encoding="utf-8").read()
    assert "step 2" in card and "t2i/loss" in card


def test_stage2_prompts_carry_the_resolution(trained):
    _, workdir = trained
    model = runs.load_run(workdir)
    f = model.vq_cfg.downsample_factor
    grid = images_lib.choose_grid(None, model.grids, f, model.resolution_prefix)
    texts = images_lib.prompt_texts(["a cat"], grid, f, model.resolution_prefix)
    assert texts == [f"{grid[1] * f}x{grid[0] * f} a cat"]
    with pytest.raises(ValueError, match="not one the model trained on"):
        images_lib.choose_grid("512x512", model.grids, f, True)
    with pytest.raises(ValueError, match="without a resolution prompt"):
        images_lib.choose_grid("32x32", model.grids, f, False)


def test_cascade_keeps_the_aspect_ratio():
    sizes = [((32, 32), (64, 64)), ((32, 48), (64, 96)), ((48, 32), (96, 64))]
    assert images_lib.matching_sr_size(sizes, (256, 384)) == ((32, 48), (64, 96))
    assert images_lib.matching_sr_size(sizes, (384, 256)) == ((48, 32), (96, 64))
    assert images_lib.matching_sr_size(sizes, (100, 101)) == ((32, 32), (64, 64))


def test_generate_cli_from_another_directory_on_a_bundle(trained, tmp_path):
    _, workdir = trained
    bundle = str(tmp_path / "bundle")
    export.export(workdir, bundle)
    out = tmp_path / "samples"
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "mars_jax.generate", f"--checkpoint={bundle}"]
    cmd += ["--prompt=a red circle", f"--out={out}", "--num-per-prompt=2"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["0000.png", "0001.png", "contact_sheet.png", "prompts.txt"]
