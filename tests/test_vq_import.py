"""VQ-GAN import: parity with a tiny random diffusers VQModel; taming and open-muse layouts."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from mars_jax.vq import checkpoint, import_torch, model  # noqa: E402
from mars_jax.vq.checkpoint import VQCheckpointError  # noqa: E402


def _random_vqmodel(attention_levels: bool, seed: int = 0):
    torch.manual_seed(seed)
    down = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D") if attention_levels else None
    up = ("AttnUpDecoderBlock2D", "UpDecoderBlock2D") if attention_levels else None
    vq = diffusers.VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=down or ("DownEncoderBlock2D",) * 2,
        up_block_types=up or ("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        vq_embed_dim=3,
        num_vq_embeddings=64,
        norm_num_groups=32,
        sample_size=16,
        norm_type="group",
        mid_block_add_attention=True,
        lookup_from_codebook=False,
        force_upcast=False,
    ).eval()
    with torch.no_grad():
        for name, p in vq.named_parameters():
            if name.endswith("norm1.weight") or "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))  # GroupNorm scales away from 1
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn_like(p))
            elif name == "quantize.embedding.weight":
                p.copy_(torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / np.sqrt(fan_in))
    return vq


_CACHE = {}


def _saved(kind: str, tmp_path_factory):
    """A random VQModel saved with ``save_pretrained``, and its import (built once per kind)."""
    if kind not in _CACHE:
        vq = _random_vqmodel(attention_levels=kind == "level_attn")
        path = str(tmp_path_factory.mktemp(f"diffusers_{kind}"))
        vq.save_pretrained(path, safe_serialization=True)
        _CACHE[kind] = (vq, path, import_torch.import_checkpoint(path))
    return _CACHE[kind]


@pytest.fixture(scope="module")
def mid_attn(tmp_path_factory):
    return _saved("mid_attn", tmp_path_factory)


@pytest.fixture(scope="module")
def level_attn(tmp_path_factory):
    return _saved("level_attn", tmp_path_factory)


@pytest.mark.parametrize("kind", ["mid_attn", "level_attn"])
def test_diffusers_parity(kind, tmp_path_factory):
    vq, _, result = _saved(kind, tmp_path_factory)
    cfg, params = result.cfg, result.params
    assert result.layout == "diffusers"
    assert (cfg.base_channels, cfg.ch_mult, cfg.z_channels, cfg.embed_dim) == (32, (1, 2), 4, 3)
    assert result.unused_keys == []

    rng = np.random.default_rng(0)
    x_NCHW = rng.uniform(-1, 1, size=(2, 3, 16, 24)).astype(np.float32)  # non-square
    with torch.no_grad():
        t_latents = vq.encode(torch.from_numpy(x_NCHW)).latents
        _, _, (_, _, t_codes) = vq.quantize(t_latents)
        t_images = vq.decode(t_latents).sample
    want_latents = t_latents.numpy().transpose(0, 2, 3, 1)
    want_codes = t_codes.numpy().reshape(2, 8, 12)
    want_images = t_images.numpy().transpose(0, 2, 3, 1)
    assert len(np.unique(want_codes)) > 8  # the codebook is really exercised

    x_NHWC = jnp.asarray(x_NCHW.transpose(0, 2, 3, 1))
    latents = model.encode_latents(params, cfg, x_NHWC)
    np.testing.assert_allclose(latents, want_latents, atol=1e-4, rtol=0)
    codes = model.encode(params, cfg, x_NHWC)
    np.testing.assert_array_equal(codes, want_codes)
    images = model.decode_latents(params, cfg, model.lookup(params, codes))
    np.testing.assert_allclose(images, want_images, atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        model.decode(params, cfg, codes), np.clip(want_images, -1, 1), atol=1e-4, rtol=0
    )


# Taming-transformers names, written out here independently of the importer's renaming rules.
def _diffusers_to_taming_key(key: str, n_levels: int) -> str:
    parts = key.split(".")
    out = []
    i = 0
    while i < len(parts):
        p = parts[i]
        if p == "down_blocks":
            out += ["down", parts[i + 1]]
            i += 2
        elif p == "up_blocks":
            out += ["up", str(n_levels - 1 - int(parts[i + 1]))]
            i += 2
        elif p == "resnets" and out[-1] == "mid_block":
            out[-1] = "mid"
            out.append(["block_1", "block_2"][int(parts[i + 1])])
            i += 2
        elif p == "attentions" and out[-1] == "mid_block":
            out[-1] = "mid"
            out.append("attn_1")
            i += 2
        elif p in ("resnets", "attentions"):
            out += [{"resnets": "block", "attentions": "attn"}[p], parts[i + 1]]
            i += 2
        elif p in ("downsamplers", "upsamplers"):
            out.append({"downsamplers": "downsample", "upsamplers": "upsample"}[p])
            i += 2
        elif p == "to_out":
            out.append("proj_out")
            i += 2
        else:
            rename = {
                "conv_shortcut": "nin_shortcut",
                "conv_norm_out": "norm_out",
                "group_norm": "norm",
                "to_q": "q",
                "to_k": "k",
                "to_v": "v",
            }
            out.append(rename.get(p, p))
            i += 1
    return ".".join(out)


def _taming_state_dict(vq):
    sd = {}
    for key, value in vq.state_dict().items():
        new = _diffusers_to_taming_key(key, n_levels=2)
        if any(f".{n}.weight" in new for n in ("q", "k", "v", "proj_out")):
            value = value[:, :, None, None]  # taming keeps attention projections as 1×1 convs
        sd[new] = value.clone()
    return sd


def _assert_same_params(a, b):
    fa, fb = checkpoint.flatten_params(a), checkpoint.flatten_params(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_taming_ckpt_converts_to_identical_params(level_attn, tmp_path):
    vq, _, reference = level_attn
    sd = _taming_state_dict(vq)
    sd["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)  # training-only, ignored
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "global_step": 7}, ckpt)
    result = import_torch.import_checkpoint(str(ckpt), resolution=16)
    assert result.layout == "taming"
    assert result.cfg == reference.cfg
    assert result.unused_keys == []
    _assert_same_params(result.params, reference.params)


def _write_muse_dir(vq, reference, src):
    src.mkdir()
    sd = {k: v.numpy() for k, v in _taming_state_dict(vq).items()}
    safetensors.numpy.save_file(sd, str(src / "model.safetensors"))
    muse_config = {
        "_class_name": "VQGANModel",
        "resolution": 16,
        "hidden_channels": 32,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": list(reference.cfg.attn_resolutions),
        "z_channels": 4,
        "num_embeddings": 64,
        "quantized_embed_dim": 3,
    }
    (src / "config.json").write_text(json.dumps(muse_config))


def test_muse_layout_via_cli(mid_attn, tmp_path):
    vq, _, reference = mid_attn
    _write_muse_dir(vq, reference, tmp_path / "muse")
    out = tmp_path / "out"
    assert import_torch.main([f"--src={tmp_path / 'muse'}", f"--out={out}"]) == 0
    cfg, params = checkpoint.load_vq(str(out))
    assert cfg == reference.cfg
    _assert_same_params(params, reference.params)


def test_muse_one_block_level_attention_is_refused(level_attn, tmp_path, capsys):
    # open-muse skips encoder level attention with one block per level: refused, not guessed.
    vq, _, reference = level_attn
    _write_muse_dir(vq, reference, tmp_path / "muse")
    out = tmp_path / "out"
    assert import_torch.main([f"--src={tmp_path / 'muse'}", f"--out={out}"]) == 1
    assert "num_res_blocks" in capsys.readouterr().err and not out.exists()


def test_missing_and_misshaped_tensors_are_named(level_attn, tmp_path):
    vq, _, _ = level_attn
    sd = _taming_state_dict(vq)
    missing = dict(sd)
    del missing["decoder.up.0.block.1.conv2.bias"]
    torch.save({"state_dict": missing}, tmp_path / "missing.ckpt")
    with pytest.raises(VQCheckpointError, match=r"decoder\.up\.0\.block\.1\.conv2\.bias"):
        import_torch.import_checkpoint(str(tmp_path / "missing.ckpt"))
    bad = dict(sd)
    bad["encoder.mid.block_2.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save({"state_dict": bad}, tmp_path / "bad.ckpt")
    with pytest.raises(VQCheckpointError, match=r"encoder\.mid\.block_2\.conv1\.weight.*shape"):
        import_torch.import_checkpoint(str(tmp_path / "bad.ckpt"))


def test_unsupported_diffusers_options_are_refused(mid_attn, tmp_path):
    _, path, _ = mid_attn
    cfg_json = json.loads(open(os.path.join(path, "config.json")).read())
    cfg_json["norm_type"] = "spatial"
    d = tmp_path / "spatial"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg_json))
    os.symlink(
        os.path.join(path, "diffusion_pytorch_model.safetensors"),
        d / "diffusion_pytorch_model.safetensors",
    )
    with pytest.raises(VQCheckpointError, match="norm_type"):
        import_torch.import_checkpoint(str(d))
