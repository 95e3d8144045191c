"""FID / CLIP-score math against scipy, and the feature-extractor seam."""

import numpy as np
import pytest
import scipy.linalg

from mars_jax.demo import shapes
from mars_jax.eval import features, fid


def _scipy_fid(f1, f2):
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.atleast_2d(np.cov(f1, rowvar=False)), np.atleast_2d(np.cov(f2, rowvar=False))
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("dim", [1, 4, 32])
def test_fid_matches_scipy_sqrtm(dim):
    rng = np.random.default_rng(dim)
    mix1 = rng.normal(size=(dim, dim))
    mix2 = rng.normal(size=(dim, dim))
    f1 = rng.normal(size=(500, dim)) @ mix1
    f2 = rng.normal(size=(400, dim)) @ mix2 + 0.7
    ours = fid.fid(f1, f2)
    assert ours > 0.1
    np.testing.assert_allclose(ours, _scipy_fid(f1, f2), rtol=1e-6, atol=1e-8)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift():
    f = np.random.default_rng(0).normal(size=(300, 8))
    assert abs(fid.fid(f, f)) < 1e-8
    assert fid.fid(f, f + 1.0) == pytest.approx(fid.fid(f, f) + 8.0, abs=1e-6)


def test_trace_sqrt_of_singular_covariances():
    rng = np.random.default_rng(1)
    low_rank = rng.normal(size=(50, 2)) @ rng.normal(size=(2, 6))  # rank-2 covariance
    s1 = np.cov(low_rank, rowvar=False)
    s2 = np.cov(rng.normal(size=(50, 6)), rowvar=False)
    expected = np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid.trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-5)


def test_fid_input_errors():
    with pytest.raises(ValueError, match="N >= 2"):
        fid.fid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="mismatch"):
        fid.fid(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        fid.fid(np.full((4, 3), np.nan), np.ones((4, 3)))


def test_clip_score_is_100_times_clipped_mean_cosine():
    img = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    txt = np.array([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    # cosines 1, -1 → 0, 1/sqrt(2)
    assert fid.clip_score(img, txt) == pytest.approx(100 * (1 + 0 + 2**-0.5) / 3)
    with pytest.raises(ValueError, match="matched"):
        fid.clip_score(img, txt[:2])


def test_palette_features_agree_with_their_own_captions():
    data = shapes.make_dataset(40)
    ex = features.PaletteFeatures()
    img, txt = ex.image_features(data.images), ex.text_features(data.captions)
    assert img.shape == txt.shape == (40, ex.dim)
    matched = fid.clip_score(img, txt)
    shuffled = fid.clip_score(img, np.roll(txt, 1, axis=0))
    assert matched > 85 and shuffled < matched - 25
    # Chinese and English captions of one scene give the same text features.
    p = shapes.eval_prompts(6)
    zh_en = ex.text_features([q["caption"] for q in p])
    np.testing.assert_allclose(zh_en[0::2], zh_en[1::2])


class _Constant:
    def image_features(self, images):
        return np.ones((len(images), 3))

    def text_features(self, texts):
        return np.ones((len(texts), 3))


CONSTANT = _Constant()


def test_load_extractor():
    assert isinstance(features.load_extractor("palette"), features.PaletteFeatures)
    assert isinstance(features.load_extractor(f"{__name__}:_Constant"), _Constant)
    assert features.load_extractor(f"{__name__}:CONSTANT") is CONSTANT
    with pytest.raises(TypeError, match="image_features"):
        features.load_extractor("fractions:Fraction")
    with pytest.raises(ValueError, match="module:attribute"):
        features.load_extractor("inception")
