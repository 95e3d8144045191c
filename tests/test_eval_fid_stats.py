"""FID statistics: pytorch-fid's Fréchet distance and its / clean-fid's ``.npz`` format.

pytorch-fid itself imports torchvision, whose PyPI wheels need the CUDA torch build, so its
two pieces used here are restated from its 0.3.0 source: ``calculate_frechet_distance``
(scipy ``sqrtm``, ``eps`` on the diagonals when the root is not finite, real part) and its
``.npz`` I/O (``np.savez_compressed(path, mu=, sigma=)``; ``np.load(path)['mu'][:]``).
"""

import os

import numpy as np
import pytest
import scipy.linalg

from mars_jax.eval import fid_stats


def pytorch_fid_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _stats(f):
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # scipy sqrtm(disp=)
@pytest.mark.parametrize("n,d", [(400, 16), (300, 64), (40, 64)])  # the last: singular
def test_frechet_distance_matches_pytorch_fid(n, d):
    rng = np.random.default_rng(d + n)
    f1 = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    f2 = rng.normal(size=(n + 7, d)) @ rng.normal(size=(d, d)) + 0.3
    want = pytorch_fid_frechet(*_stats(f1), *_stats(f2))
    got = fid_stats.frechet_distance(*_stats(f1), *_stats(f2))
    assert got > 1.0
    assert got == pytest.approx(want, rel=1e-6 if n > d else 1e-4)


def test_frechet_distance_scalar_inputs_and_shape_errors():
    # np.atleast_1d/2d as in pytorch-fid: 1-d "features" given as scalars
    assert fid_stats.frechet_distance(0.0, 1.0, 2.0, 4.0) == pytest.approx(4 + 1 + 4 - 2 * 2)
    with pytest.raises(ValueError, match="different lengths"):
        fid_stats.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_npz_round_trip_with_pytorch_fid_and_clean_fid_format(tmp_path):
    rng = np.random.default_rng(0)
    mu, sigma = _stats(rng.normal(size=(50, 6)))
    ours = str(tmp_path / "ours.npz")
    fid_stats.save_stats(ours, mu, sigma)
    with np.load(ours) as f:  # how pytorch-fid's compute_statistics_of_path reads it
        m, s = f["mu"][:], f["sigma"][:]
    np.testing.assert_array_equal(m, mu)
    np.testing.assert_array_equal(s, sigma)
    theirs = str(tmp_path / "theirs.npz")
    np.savez_compressed(theirs, mu=mu * 2, sigma=sigma * 3)  # pytorch-fid / clean-fid writes
    m2, s2 = fid_stats.load_stats(theirs)
    np.testing.assert_array_equal(m2, mu * 2)
    np.testing.assert_array_equal(s2, sigma * 3)
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, mean=mu)
    with pytest.raises(KeyError, match="no 'mu'"):
        fid_stats.load_stats(bad)


def test_folder_features_reads_images_sorted_with_progress(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    seen = []

    def features(batch):
        seen.extend(batch)
        return np.stack([b.reshape(-1)[:4].astype(float) for b in batch])

    out = fid_stats.folder_features(str(tmp_path), features, "test", chunk=2)
    assert out.shape == (5, 4) and len(seen) == 5
    np.testing.assert_array_equal(out[3], images[3].reshape(-1)[:4])
    assert "5/5" in capsys.readouterr().err
    assert fid_stats.count_images(str(tmp_path)) == 5
    assert [os.path.basename(p) for p in fid_stats.list_images(str(tmp_path))][0] == "00.png"
