"""FID statistics: image folders → features → (mu, sigma) ``.npz`` → Fréchet distance.

``.npz`` statistics hold ``mu`` [D] and ``sigma`` [D, D] (float64), the format that
pytorch-fid (``--save-stats``; ``np.load(path)['mu'], ['sigma']``) and clean-fid
(``np.savez_compressed(path, mu=mu, sigma=sigma)``) write and read, so reference statistics
can be shared with either tool (features must come from the same network and resize
protocol for the numbers to compare).

``frechet_distance`` follows pytorch-fid's ``calculate_frechet_distance``: same formula,
same inputs (``np.atleast_1d``/``2d``), and the same fallback of adding ``eps`` to both
covariance diagonals when the matrix square root is not finite. The square root is taken
through symmetric eigen-decompositions (``mars_jax.eval.fid.trace_sqrt_product``) instead of
``scipy.linalg.sqrtm``, so no scipy is needed at run time; the tests check it against the
scipy formula.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from mars_jax.eval import fid

# pytorch-fid's IMAGE_EXTENSIONS
IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")
SHARD_PREFIX = "shard_"


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
    """``np.savez_compressed(path, mu=, sigma=)``: pytorch-fid's and clean-fid's format."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``mu``, ``sigma`` of a pytorch-fid / clean-fid ``.npz`` (an error names a missing key)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"statistics file not found: {path}")
    with np.load(path) as f:
        for key in ("mu", "sigma"):
            if key not in f.files:
                raise KeyError(f"{path}: no {key!r} array (has {sorted(f.files)})")
        mu, sigma = f["mu"][:], f["sigma"][:]
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """pytorch-fid's ``calculate_frechet_distance`` (see the module docstring)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different lengths: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances have different shapes: {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    tr_covmean = fid.trace_sqrt_product(sigma1, sigma2)
    if not np.isfinite(tr_covmean):
        offset = np.eye(sigma1.shape[0]) * eps
        tr_covmean = fid.trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def stats_of_features(features_NxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-fid's statistics: ``np.mean(act, 0)``, ``np.cov(act, rowvar=False)``."""
    return fid.gaussian_stats(features_NxD)


# ---------------------------------------------------------------------------------------
# Image sources: a folder of image files, or a folder of generated ``shard_*.npz``.


def list_images(folder: str) -> list[str]:
    """Image files directly in ``folder`` (pytorch-fid's extensions), sorted by name."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    names = sorted(
        n for n in os.listdir(folder) if n.lower().rsplit(".", 1)[-1] in IMAGE_EXTENSIONS
    )
    return [os.path.join(folder, n) for n in names]


def list_shards(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    names = sorted(
        n for n in os.listdir(folder) if n.startswith(SHARD_PREFIX) and n.endswith(".npz")
    )
    return [os.path.join(folder, n) for n in names]


def count_images(folder: str) -> int:
    shards = list_shards(folder)
    if shards:
        total = 0
        for path in shards:
            with np.load(path) as f:
                total += len(f["index"])
        return total
    return len(list_images(folder))


def read_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def iter_images(folder: str, chunk: int = 64) -> Iterator[list[np.ndarray]]:
    """Lists of uint8 RGB images (sizes may differ) from image files or shards."""
    shards = list_shards(folder)
    if shards:
        for path in shards:
            with np.load(path) as f:
                images = f["images"]
            for start in range(0, len(images), chunk):
                yield list(images[start : start + chunk])
        return
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) or shards")
    for start in range(0, len(files), chunk):
        yield [read_image(p) for p in files[start : start + chunk]]


def folder_features(
    folder: str,
    image_features: Callable[[Sequence[np.ndarray]], np.ndarray],
    desc: str = "features",
    progress: bool = True,
    chunk: int = 64,
) -> np.ndarray:
    """Features [N, D] of every image in ``folder``, with a tqdm progress bar."""
    from tqdm import tqdm

    total = count_images(folder)
    out = []
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for images in iter_images(folder, chunk):
            out.append(np.asarray(image_features(images)))
            bar.update(len(images))
    return np.concatenate(out)


def stats_of(
    source: str,
    image_features: Callable[[Sequence[np.ndarray]], np.ndarray],
    desc: str,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a ``.npz`` statistics file or of an image / shard folder."""
    if source.endswith(".npz") and not os.path.isdir(source):
        return load_stats(source)
    return stats_of_features(folder_features(source, image_features, desc, progress))
