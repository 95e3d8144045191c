"""FID and CLIP score from features, with no matrix square root routine.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to two feature
sets: ``|mu1 - mu2|² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^½)``. The trace term needs only the
eigenvalues of ``S1 S2``, which equal those of the symmetric PSD matrix ``A S2 A`` with
``A = S1^½``; two symmetric eigen-decompositions (``numpy.linalg.eigh``) give it exactly,
without ``scipy.linalg.sqrtm`` and its complex round-off. All math is float64 numpy.

CLIP score (Hessel et al. 2021, as in torchmetrics): 100 × mean over pairs of
max(cosine(image feature, text feature), 0).

The numbers are only as meaningful as the features: standard FID needs Inception-v3 pool
features and standard CLIP score a CLIP model; plug those in through
``mars_jax.eval.features.FeatureExtractor``.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features_NxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of a feature set (N ≥ 2 rows)."""
    f = np.asarray(features_NxD, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain NaN or Inf")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(sym_DxD: np.ndarray) -> np.ndarray:
    eigvals, eigvecs = np.linalg.eigh((sym_DxD + sym_DxD.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def trace_sqrt_product(sigma1_DxD: np.ndarray, sigma2_DxD: np.ndarray) -> float:
    """Tr((S1 S2)^½) for PSD S1, S2, via the eigenvalues of S1^½ S2 S1^½."""
    a = _psd_sqrt(np.asarray(sigma1_DxD, np.float64))
    m = a @ np.asarray(sigma2_DxD, np.float64) @ a
    eigvals = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eigvals, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    trace = np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(diff @ diff + trace, 0.0))


def fid(features1_NxD: np.ndarray, features2_MxD: np.ndarray) -> float:
    """FID between two feature sets."""
    return frechet_distance(*gaussian_stats(features1_NxD), *gaussian_stats(features2_MxD))


def clip_score(image_features_NxD: np.ndarray, text_features_NxD: np.ndarray) -> float:
    """100 × mean of max(cosine similarity, 0) over matched (image, text) rows."""
    img = np.asarray(image_features_NxD, np.float64)
    txt = np.asarray(text_features_NxD, np.float64)
    if img.shape != txt.shape or img.ndim != 2:
        raise ValueError(f"need matched [N, D] features, got {img.shape} and {txt.shape}")
    norms = np.linalg.norm(img, axis=1) * np.linalg.norm(txt, axis=1)
    cos = np.sum(img * txt, axis=1) / np.maximum(norms, 1e-12)
    return float(100.0 * np.mean(np.maximum(cos, 0.0)))
