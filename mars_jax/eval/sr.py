"""The `sr` bench: stage-III high-res images vs bicubic upsampling of the low-res decode.

For each ground-truth high-res image, the low-res image is made as the data pipeline makes
it (`image_ops.resize_cover_crop`), encoded with the VQ tokenizer, and:

- `bicubic`: the low-res codes are decoded and upsampled bicubically to the high-res size;
- `sr`: the stage-III model turns caption + low-res codes into high-res codes (an
  `SRProducer`), which are decoded;
- `vq_recon`: the ground truth's own high-res codes, decoded — the best any code predictor
  can reach through this tokenizer.

Each is scored against the ground truth by PSNR (dB, 8-bit peak) and mean L1 (pixels in
[0, 1]). The producer is a seam: `model_producer` wraps `nktp_sampling.sample_hires_codes`;
tests pass stand-ins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from mars_jax.data import image_ops

# (captions, low-res codes [N, h, w], high-res grid (H/f, W/f), seed) -> codes [N, H/f, W/f]
SRProducer = Callable[[Sequence[str], np.ndarray, tuple[int, int], int], np.ndarray]

METHODS = ("sr", "bicubic", "vq_recon")


def psnr(a_uint8: np.ndarray, b_uint8: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images `[N, H, W, C]` (inf where identical)."""
    diff = a_uint8.astype(np.float64) - b_uint8.astype(np.float64)
    mse = np.mean(diff * diff, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


def l1(a_uint8: np.ndarray, b_uint8: np.ndarray) -> np.ndarray:
    """Per-image mean absolute error with pixels scaled to [0, 1]."""
    diff = np.abs(a_uint8.astype(np.float64) - b_uint8.astype(np.float64)) / 255.0
    return np.mean(diff, axis=(1, 2, 3))


def bicubic_upsample(images_uint8: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of uint8 `[N, h, w, 3]` to `[N, H, W, 3]` (Pillow)."""
    size = (int(out_hw[1]), int(out_hw[0]))
    return np.stack(
        [
            np.asarray(Image.fromarray(x).resize(size, Image.Resampling.BICUBIC))
            for x in images_uint8
        ]
    )


def downsample(images_uint8: np.ndarray, lo_hw: tuple[int, int]) -> np.ndarray:
    """Low-res images as stage-III data preparation makes them."""
    return np.stack(
        [image_ops.resize_cover_crop(Image.fromarray(x), tuple(lo_hw)) for x in images_uint8]
    )


def _vq_encode(vq_params, vq_cfg, images_uint8: np.ndarray) -> np.ndarray:
    from mars_jax.vq import model as vq_model  # noqa: PLC0415 (jax import only when used)

    return np.asarray(vq_model.encode(vq_params, vq_cfg, image_ops.to_model_input(images_uint8)))


def _vq_decode(vq_params, vq_cfg, codes: np.ndarray) -> np.ndarray:
    from mars_jax.vq import model as vq_model  # noqa: PLC0415

    images = np.asarray(vq_model.decode(vq_params, vq_cfg, np.asarray(codes, np.int32)))
    return ((images + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def run_sr_bench(
    produce: SRProducer,
    vq_cfg,
    vq_params,
    hi_images_uint8: np.ndarray,
    captions: Sequence[str],
    lo_hw: tuple[int, int],
    *,
    seed: int = 0,
    batch_size: int = 16,
) -> dict:
    """Scores of `sr`, `bicubic` and `vq_recon` against the ground truth, and their images.

    Returns `{"num_images", "<method>_psnr", "<method>_l1", "images": {method: uint8}}`
    (means over images; PSNR of identical images is capped at 100 dB before averaging).
    """
    hi = np.asarray(hi_images_uint8)
    if hi.dtype != np.uint8 or hi.ndim != 4 or hi.shape[0] != len(captions):
        raise ValueError(
            f"sr bench: ground truth must be uint8 [N, H, W, 3] with N = {len(captions)} "
            f"captions, got {hi.dtype} {hi.shape}"
        )
    f = vq_cfg.downsample_factor
    hi_grid = (hi.shape[1] // f, hi.shape[2] // f)
    images = {m: [] for m in METHODS}
    for start in range(0, hi.shape[0], batch_size):
        gt = hi[start : start + batch_size]
        lo_codes = _vq_encode(vq_params, vq_cfg, downsample(gt, lo_hw))
        lo_decoded = _vq_decode(vq_params, vq_cfg, lo_codes)
        images["bicubic"].append(bicubic_upsample(lo_decoded, gt.shape[1:3]))
        images["vq_recon"].append(_vq_decode(vq_params, vq_cfg, _vq_encode(vq_params, vq_cfg, gt)))
        batch_captions = list(captions[start : start + batch_size])
        sr_codes = np.asarray(produce(batch_captions, lo_codes, hi_grid, seed + start))
        if sr_codes.shape != (gt.shape[0], *hi_grid):
            raise ValueError(
                f"sr bench: producer returned codes {sr_codes.shape}, expected "
                f"{(gt.shape[0], *hi_grid)}"
            )
        images["sr"].append(_vq_decode(vq_params, vq_cfg, sr_codes))
    result: dict = {"num_images": int(hi.shape[0]), "images": {}}
    for m in METHODS:
        out = np.concatenate(images[m])
        result["images"][m] = out
        result[f"{m}_psnr"] = float(np.mean(np.minimum(psnr(out, hi), 100.0)))
        result[f"{m}_l1"] = float(np.mean(l1(out, hi)))
    return result


def report_lines(result: dict) -> list[str]:
    """Printable lines; the last is `sr_psnr=<a> bicubic_psnr=<b>` (higher is better)."""
    lines = [f"{m}: psnr={result[f'{m}_psnr']:.2f}dB l1={result[f'{m}_l1']:.4f}" for m in METHODS]
    lines.append(
        f"images={result['num_images']} sr_beats_bicubic={result['sr_psnr'] > result['bicubic_psnr']}"
    )
    lines.append(f"sr_psnr={result['sr_psnr']:.2f} bicubic_psnr={result['bicubic_psnr']:.2f}")
    return lines


def demo_ground_truth(num: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """`num` held-out demo scenes (64×64 renderings) and their English captions."""
    from mars_jax.demo import shapes  # noqa: PLC0415

    prompts = [p for p in shapes.eval_prompts(num, seed) if p["lang"] == "en"]
    images = np.stack([shapes.render(shapes.SceneSpec.from_json(p["spec"])) for p in prompts])
    return images, [p["caption"] for p in prompts]


def model_producer(
    frozen: dict,
    trainable: dict,
    model_cfg,
    vq_cfg,
    tokenize: Callable[[str], list[int]],
    text_len: int,
    k: int | None = None,
    mode: str = "fast",
    scfg=None,
) -> SRProducer:
    """An `SRProducer` from a stage-III model (`nktp_sampling.sample_hires_codes`).

    Captions get the high-res resolution in front, as in stage-III data; codes are limited to
    the VQ codebook; the default is greedy, unguided, `k` = the model's K, fast mode.
    """
    from mars_jax import nktp_sampling  # noqa: PLC0415
    from mars_jax.data import formats  # noqa: PLC0415
    from mars_jax.sampling import SamplingConfig  # noqa: PLC0415

    f = vq_cfg.downsample_factor
    scfg = scfg or SamplingConfig(cfg_scale=1.0, temperature=0.0)
    scfg = dataclasses.replace(scfg, codebook_size=vq_cfg.codebook_size)
    k = k or model_cfg.nktp_k

    def produce(captions: Sequence[str], lo_codes: np.ndarray, hi_grid, seed: int):
        texts = [
            tokenize(formats.resolution_prompt(hi_grid[1] * f, hi_grid[0] * f, c)) for c in captions
        ]
        codes, _ = nktp_sampling.sample_hires_codes(
            frozen,
            trainable,
            model_cfg,
            texts,
            lo_codes,
            hi_grid,
            k,
            mode,
            text_len=text_len,
            scfg=scfg,
            seed=seed,
        )
        return codes

    return produce
