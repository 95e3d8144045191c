"""VQ-GAN model shapes, presets and the safetensors checkpoint with its content hash."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from mars_jax.vq import checkpoint, model
from mars_jax.vq.checkpoint import VQCheckpointError
from mars_jax.vq.config import VQConfig

TINY = VQConfig(
    base_channels=32,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),
    z_channels=8,
    embed_dim=4,
    codebook_size=16,
    resolution=16,
)


@pytest.mark.parametrize(
    "cfg, side, grid",
    [(VQConfig.paper(), 256, 16), (VQConfig.demo(), 64, 8)],
    ids=["paper", "demo"],
)
def test_presets_shapes(cfg, side, grid):
    assert cfg.latent_size == grid and side // cfg.downsample_factor == grid
    params = model.abstract_params(cfg)
    images = jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32)
    codes = jax.eval_shape(lambda p, x: model.encode(p, cfg, x), params, images)
    assert codes.shape == (2, grid, grid) and codes.dtype == jnp.int32
    out = jax.eval_shape(lambda p, c: model.decode(p, cfg, c), params, codes)
    assert out.shape == (2, side, side, 3)
    assert params["quantize"]["embedding"].shape == (cfg.codebook_size, cfg.embed_dim)


def test_paper_preset_matches_taming_f16():
    cfg = VQConfig.paper()
    assert (cfg.base_channels, cfg.ch_mult, cfg.num_res_blocks) == (128, (1, 1, 2, 2, 4), 2)
    assert (cfg.attn_resolutions, cfg.codebook_size, cfg.downsample_factor) == ((16,), 8192, 16)
    # Attention at the 16×16 level in both the encoder and the decoder, as in taming.
    params = model.abstract_params(cfg)
    assert "attn" in params["encoder"]["down"][4] and "attn" in params["decoder"]["up"][4]
    assert "attn" not in params["encoder"]["down"][3]


def test_bad_config_and_images_are_rejected():
    with pytest.raises(ValueError, match="norm_groups"):
        VQConfig(base_channels=48)
    with pytest.raises(ValueError, match="unknown VQConfig keys"):
        VQConfig.from_dict({"codebook": 3})
    params = model.abstract_params(TINY)
    with pytest.raises(ValueError, match="multiple of the VQ factor"):
        jax.eval_shape(
            lambda p, x: model.encode(p, TINY, x),
            params,
            jax.ShapeDtypeStruct((1, 15, 16, 3), jnp.float32),
        )


def test_quantize_picks_nearest_code():
    params = model.init(TINY, jax.random.key(0))
    codebook = np.asarray(params["quantize"]["embedding"])
    z = jax.random.normal(jax.random.key(1), (2, 3, 5, TINY.embed_dim)) * 0.01
    codes, z_q = model.quantize(params, TINY, z)
    d = ((np.asarray(z)[..., None, :] - codebook) ** 2).sum(-1)
    np.testing.assert_array_equal(codes, d.argmin(-1))
    np.testing.assert_array_equal(z_q, codebook[np.asarray(codes)])


def test_patch_encoder_codes_each_patch_from_its_own_pixels():
    """With `patch_encoder`, changing one patch changes only that patch's latent, and a patch
    encodes as it does alone; taming's encoder lets the change reach the neighbours."""
    f = TINY.downsample_factor  # 16-px images, an 8x8 grid of 2x2-px patches
    x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 3), minval=-1, maxval=1)
    x_changed = x.at[:, 3 * f : 4 * f, 5 * f : 6 * f].set(0.5)  # the patch at row 3, column 5
    for patch_encoder in (True, False):
        cfg = VQConfig(**{**json.loads(TINY.to_json()), "patch_encoder": patch_encoder})
        params = model.init(cfg, jax.random.key(0))
        latents = model.encode_latents(params, cfg, x)
        moved_8x8 = np.abs(
            np.asarray(model.encode_latents(params, cfg, x_changed)) - np.asarray(latents)
        ).max(axis=(0, 3))
        if patch_encoder:
            assert moved_8x8[3, 5] > 0 and (moved_8x8 > 0).sum() == 1
            patch_alone = x[:1, 2 * f : 3 * f, 6 * f : 7 * f]  # row 2, column 6
            np.testing.assert_allclose(
                model.encode_latents(params, cfg, jnp.tile(patch_alone, (1, 8, 8, 1)))[0, 0, 0],
                latents[0, 2, 6],
                atol=1e-5,
            )
        else:
            assert (moved_8x8 > 0).sum() > 1
    # Earlier VQs (taming's encoder) keep their JSON, so their recorded identities still hold.
    assert "patch_encoder" not in json.loads(TINY.to_json())
    patch_cfg = VQConfig(**{**json.loads(TINY.to_json()), "patch_encoder": True})
    assert VQConfig.from_dict(json.loads(patch_cfg.to_json())) == patch_cfg


def test_checkpoint_round_trip_and_identity(tmp_path):
    params = model.init(TINY, jax.random.key(0))
    identity = checkpoint.save_vq(str(tmp_path), TINY, params)
    cfg, loaded = checkpoint.load_vq(str(tmp_path))
    assert cfg == TINY and checkpoint.vq_identity(cfg, loaded) == identity
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    x = jax.random.uniform(jax.random.key(2), (1, 16, 16, 3), minval=-1, maxval=1)
    np.testing.assert_array_equal(model.encode(params, TINY, x), model.encode(loaded, cfg, x))
    # The identity depends on every tensor and on the config.
    changed = jax.tree.map(lambda v: v, params)
    changed["decoder"]["conv_out"]["bias"] = changed["decoder"]["conv_out"]["bias"].at[0].add(1e-3)
    assert checkpoint.vq_identity(TINY, changed) != identity
    other = VQConfig(**{**json.loads(TINY.to_json()), "resolution": 32})
    assert checkpoint.vq_identity(other, params) != identity
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_damaged_checkpoints_give_named_errors(tmp_path):
    params = model.init(TINY, jax.random.key(0))
    checkpoint.save_vq(str(tmp_path), TINY, params)
    weights = str(tmp_path / checkpoint.PARAMS_FILE)
    flat = safetensors.numpy.load_file(weights)

    flat["encoder.conv_in.bias"] = flat["encoder.conv_in.bias"] + 1.0
    safetensors.numpy.save_file(flat, weights)
    with pytest.raises(VQCheckpointError, match="does not match the recorded identity"):
        checkpoint.load_vq(str(tmp_path))

    del flat["decoder.mid.attn_1.q.kernel"]
    safetensors.numpy.save_file(flat, weights)
    with pytest.raises(VQCheckpointError, match=r"missing.*decoder\.mid\.attn_1\.q\.kernel"):
        checkpoint.load_vq(str(tmp_path))

    with open(weights, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(VQCheckpointError, match=checkpoint.PARAMS_FILE):
        checkpoint.load_vq(str(tmp_path))

    (tmp_path / checkpoint.CONFIG_FILE).write_text("{not json")
    with pytest.raises(VQCheckpointError, match=checkpoint.CONFIG_FILE):
        checkpoint.load_vq(str(tmp_path))
    with pytest.raises(VQCheckpointError, match="cannot read"):
        checkpoint.load_vq(str(tmp_path / "nowhere"))
