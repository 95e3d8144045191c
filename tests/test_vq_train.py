"""VQ training: a few steps on tiny images lower the loss and leave a loadable checkpoint."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from mars_jax.vq import checkpoint, images, model, train
from mars_jax.vq.config import VQConfig

CFG = VQConfig.tiny(codebook_size=32)
# The adversarial term joins for the last window only; the CLI test uses the same settings, so
# both tests share one compilation of each step.
OPTS = train.TrainOptions(
    batch_size=8,
    learning_rate=1e-3,
    log_every=8,
    checkpoint_every=8,
    restart_every=8,
    adversarial_weight=0.05,
    adversarial_start=16,
    disc_layers=2,
    disc_channels=32,
    progress=False,
)


def _blobs(n, seed=0):
    """Smooth random colour fields (learnable in a few steps, unlike white noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    a = rng.uniform(0, 1, (n, 1, 1, 3))
    b = rng.uniform(-1, 1, (n, 1, 1, 3))
    img = a + b * (yy[None, :, :, None] if seed % 2 == 0 else xx[None, :, :, None])
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def test_train_vq_reduces_loss_and_checkpoints(tmp_path):
    data = _blobs(24)
    result = train.train_vq(data, CFG, steps=24, options=OPTS, out_dir=str(tmp_path))
    first, last = result.history[0], result.history[-1]
    assert [h["step"] for h in result.history] == [8, 16, 24]
    assert last["loss"] < 0.7 * first["loss"], result.history
    assert 0 < last["codebook_usage"] <= 1
    assert first["codes_restarted"] > 0  # random init leaves codes unused; they are restarted
    assert "d_loss" not in result.history[1] and 0.0 < last["d_loss"] < 2.0

    cfg, params = checkpoint.load_vq(str(tmp_path))
    assert cfg == CFG and checkpoint.vq_identity(cfg, params) == result.identity
    x = jax.numpy.asarray(data[:2] / 127.5 - 1.0)
    np.testing.assert_array_equal(model.encode(params, cfg, x), model.encode(result.params, CFG, x))
    log = [json.loads(line) for line in open(tmp_path / train.LOG_FILE)]
    assert [r["step"] for r in log] == [8, 16, 24]
    grid = Image.open(tmp_path / train.GRID_FILE)
    assert grid.size[1] > 2 * 16 and grid.mode == "RGB"  # originals above reconstructions


def test_cli_on_folder_with_adversarial_loss_skips_corrupt_image(tmp_path, capsys):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, im in enumerate(_blobs(9, seed=1)):
        big = Image.fromarray(im).resize((24, 20))  # not square: center-cropped, resized
        big.save(folder / ("sub" if i % 2 else "") / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "cfg.json").write_text(json.dumps(dataclasses.asdict(CFG)))
    out = tmp_path / "out"
    rc = train.main(
        [
            f"--images={folder}",
            f"--out={out}",
            f"--config={tmp_path / 'cfg.json'}",
            "--steps=3",
            "--batch_size=8",
            "--lr=1e-3",
            "--log_every=3",
            "--checkpoint_every=8",
            "--restart_every=8",
            "--adversarial_weight=0.1",
            "--adversarial_start=1",
            "--disc_layers=2",
            "--disc_channels=32",
            "--no_progress",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert "9 images loaded" in captured.out and "1 skipped" in captured.out
    assert "broken.png" in captured.err
    assert checkpoint.load_vq(str(out))[0] == CFG
    (row,) = [json.loads(line) for line in open(out / train.LOG_FILE)]
    # The discriminator trains from step 2 on, and its hinge loss starts near 1.
    assert 0.0 < row["d_loss"] < 2.0 and np.isfinite(row["g_adv"])
    assert os.path.exists(out / train.GRID_FILE)


def test_jsonl_image_list_resolves_paths_and_names_bad_lines(tmp_path):
    Image.fromarray(_blobs(1)[0]).save(tmp_path / "a.png")
    listing = tmp_path / "list.jsonl"
    listing.write_text('{"path": "a.png", "caption": "x"}\n\n{"image": "/abs/b.png"}\n')
    assert images.list_image_files(str(listing)) == [str(tmp_path / "a.png"), "/abs/b.png"]
    data, skipped = images.load_images(images.list_image_files(str(listing)), 8)
    assert data.shape == (1, 8, 8, 3) and skipped[0][0] == "/abs/b.png"
    listing.write_text('{"path": "a.png"}\n{"caption": "no path"}\n')
    with pytest.raises(ValueError, match=r"list\.jsonl line 2"):
        images.list_image_files(str(listing))
