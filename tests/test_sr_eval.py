"""The `sr` bench: metrics, and the comparison wiring on a real (tiny, random) VQ-GAN."""

import jax
import numpy as np
import pytest
from PIL import Image

from mars_jax.eval import sr
from mars_jax.vq import model as vq_model
from mars_jax.vq.config import VQConfig

TINY = VQConfig.tiny(codebook_size=16)


def test_psnr_and_l1_known_values():
    a = np.full((2, 4, 4, 3), 100, np.uint8)
    b = a.copy()
    b[1] += 1  # MSE 1 -> 20 log10(255) dB
    np.testing.assert_allclose(sr.psnr(a, b), [np.inf, 20 * np.log10(255.0)])
    np.testing.assert_allclose(sr.l1(a, b), [0.0, 1 / 255])


def test_bicubic_upsample_keeps_constants_and_matches_pillow():
    rng = np.random.default_rng(0)
    flat = np.full((1, 4, 6, 3), 77, np.uint8)
    up = sr.bicubic_upsample(flat, (8, 12))
    assert up.shape == (1, 8, 12, 3) and (up == 77).all()
    x = rng.integers(0, 256, (1, 4, 4, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(x[0]).resize((8, 8), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(sr.bicubic_upsample(x, (8, 8))[0], ref)


def test_run_sr_bench_scores_an_oracle_as_vq_reconstruction():
    params = vq_model.init(TINY, jax.random.key(0))
    rng = np.random.default_rng(1)
    hi = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    captions = ["a", "b", "c"]
    true_codes = np.asarray(vq_model.encode(params, TINY, hi.astype(np.float32) / 127.5 - 1))
    calls = []

    def oracle(caps, lo_codes, hi_grid, seed, first):
        calls.append((list(caps), lo_codes.shape, hi_grid, seed, first))
        index = [captions.index(c) for c in caps]
        return true_codes[index]

    result = sr.run_sr_bench(oracle, TINY, params, hi, captions, (8, 8), seed=5, batch_size=2)
    assert calls == [(["a", "b"], (2, 4, 4), (8, 8), 5, 0), (["c"], (1, 4, 4), (8, 8), 5, 2)]
    assert result["num_images"] == 3
    assert result["sr_psnr"] == result["vq_recon_psnr"] and result["sr_l1"] == result["vq_recon_l1"]
    np.testing.assert_array_equal(result["images"]["sr"], result["images"]["vq_recon"])
    # Bicubic: decode of the low-res codes, upsampled by Pillow, scored against the truth.
    lo = sr.downsample(hi, (8, 8))
    lo_codes = vq_model.encode(params, TINY, lo.astype(np.float32) / 127.5 - 1)
    lo_dec = np.asarray(vq_model.decode(params, TINY, lo_codes))
    lo_dec = ((lo_dec + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    expected = sr.bicubic_upsample(lo_dec, (16, 16))
    np.testing.assert_allclose(result["bicubic_psnr"], np.mean(sr.psnr(expected, hi)))
    lines = sr.report_lines(result)
    assert lines[-1].startswith("sr_psnr=") and "bicubic_psnr=" in lines[-1]

    wrong = lambda caps, lo_codes, hi_grid, seed, first: np.zeros((len(caps), 4, 4), np.int32)
    with pytest.raises(ValueError, match="producer returned codes"):
        sr.run_sr_bench(wrong, TINY, params, hi, captions, (8, 8))


def test_demo_ground_truth():
    images, captions, langs = sr.demo_ground_truth(2)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8 and len(captions) == 2
    assert langs == ["en", "en"]
    both, captions2, langs2 = sr.demo_ground_truth(2, langs=("en", "zh"))
    assert langs2 == ["en", "zh", "en", "zh"] and captions2[0::2] == captions
    np.testing.assert_array_equal(both[0::2], images)
    np.testing.assert_array_equal(both[1::2], images)  # the same scene in both languages


def test_per_language_scores_mse_and_contact_sheet():
    hi = np.zeros((2, 16, 16, 3), np.uint8)
    hi[1] = 255
    sr_images = hi.copy()
    sr_images[1, :8] = 0  # half wrong: MSE 255^2 / 2
    result = {
        "num_images": 2,
        "images": {"sr": sr_images, "bicubic": hi, "vq_recon": hi, "lowres": hi[:, ::2, ::2]},
    }
    result.update(sr._scores(result["images"], hi, np.ones(2, bool)))
    assert result["sr_mse"] == 255.0**2 / 4 and result["bicubic_mse"] == 0.0
    langs = ["en", "zh"]
    result["per_lang"] = {
        lang: {
            "num_images": 1,
            **sr._scores(result["images"], hi, np.array([x == lang for x in langs])),
        }
        for lang in langs
    }
    assert result["per_lang"]["en"]["sr_psnr"] == 100.0  # identical: capped
    lines = sr.report_lines(result, prefix="[fast] ")
    assert lines[0].startswith("[fast] sr: psnr=") and "mse=" in lines[0]
    assert any(x.startswith("[fast] zh (1 images)") for x in lines)
    assert lines[-1].startswith("sr_psnr=") and "bicubic_mse=" in lines[-1]
    sheet = sr.contact_sheet(result, hi, num=2, scale=1)
    assert sheet.shape == (2 * 18 + 2, 4 * 18 + 2, 3)
    # Row 2: low-res (repeated), bicubic, stage III, truth.
    np.testing.assert_array_equal(sheet[20:36, 2:18], hi[1])
    np.testing.assert_array_equal(sheet[20:36, 38:54], sr_images[1])
