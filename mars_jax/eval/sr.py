"""The `sr` bench: stage-III high-res images vs bicubic upsampling of the low-res decode.

For each ground-truth high-res image, the low-res image is made as the data pipeline makes
it (`image_ops.resize_cover_crop`), encoded with the VQ tokenizer, and:

- `bicubic`: the low-res codes are decoded and upsampled bicubically to the high-res size;
- `sr`: the stage-III model turns caption + low-res codes into high-res codes (an
  `SRProducer`), which are decoded;
- `vq_recon`: the ground truth's own high-res codes, decoded — the best any code predictor
  can reach through this tokenizer.

Each is scored against the ground truth by PSNR (dB, 8-bit peak), MSE (8-bit pixel values)
and mean L1 (pixels in [0, 1]), over all images and per caption language. The producer is a seam: `model_producer` wraps `sampling.nktp.sample_hires_codes`;
tests pass stand-ins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from mars_jax import outputs
from mars_jax.data import image_ops
from mars_jax.demo import shapes
from mars_jax.model import decoder
from mars_jax.sampling import nktp, options
from mars_jax.sampling.options import SamplingConfig
from mars_jax.tokens import formats
from mars_jax.vq import images as vq_images

MODES = ("fast", "exact")

# (captions, low-res codes [N, h, w], high-res grid (H/f, W/f), seed, the first caption's
# index in the bench's list) -> codes [N, H/f, W/f]
SRProducer = Callable[[Sequence[str], np.ndarray, tuple[int, int], int, int], np.ndarray]

METHODS = ("sr", "bicubic", "vq_recon")


def psnr(a_uint8: np.ndarray, b_uint8: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images `[N, H, W, C]` (inf where identical)."""
    diff = a_uint8.astype(np.float64) - b_uint8.astype(np.float64)
    mse = np.mean(diff * diff, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


def mse(a_uint8: np.ndarray, b_uint8: np.ndarray) -> np.ndarray:
    """Per-image mean squared error of uint8 images (pixel values 0..255)."""
    diff = a_uint8.astype(np.float64) - b_uint8.astype(np.float64)
    return np.mean(diff * diff, axis=(1, 2, 3))


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
    langs: Sequence[str] | None = None,
) -> dict:
    """Scores of `sr`, `bicubic` and `vq_recon` against the ground truth, and their images.

    Returns `{"num_images", "<method>_psnr", "<method>_mse", "<method>_l1", "images":
    {method: uint8, "lowres": the low-res decode}, "per_lang": {lang: {...scores}}}` (means
    over images; PSNR of identical images is capped at 100 dB before averaging). `langs`:
    each caption's language, for the per-language scores (none without it).
    """
    hi = np.asarray(hi_images_uint8)
    if hi.dtype != np.uint8 or hi.ndim != 4 or hi.shape[0] != len(captions):
        raise ValueError(
            f"sr bench: ground truth must be uint8 [N, H, W, 3] with N = {len(captions)} "
            f"captions, got {hi.dtype} {hi.shape}"
        )
    f = vq_cfg.downsample_factor
    hi_grid = (hi.shape[1] // f, hi.shape[2] // f)
    images = {m: [] for m in (*METHODS, "lowres")}
    for start in range(0, hi.shape[0], batch_size):
        gt = hi[start : start + batch_size]
        lo_codes = vq_images.encode_uint8(vq_params, vq_cfg, downsample(gt, lo_hw))
        lo_decoded = vq_images.decode_uint8(vq_params, vq_cfg, lo_codes)
        images["lowres"].append(lo_decoded)
        images["bicubic"].append(bicubic_upsample(lo_decoded, gt.shape[1:3]))
        images["vq_recon"].append(
            vq_images.decode_uint8(vq_params, vq_cfg, vq_images.encode_uint8(vq_params, vq_cfg, gt))
        )
        batch_captions = list(captions[start : start + batch_size])
        sr_codes = np.asarray(produce(batch_captions, lo_codes, hi_grid, seed, start))
        if sr_codes.shape != (gt.shape[0], *hi_grid):
            raise ValueError(
                f"sr bench: producer returned codes {sr_codes.shape}, expected "
                f"{(gt.shape[0], *hi_grid)}"
            )
        images["sr"].append(vq_images.decode_uint8(vq_params, vq_cfg, sr_codes))
    result: dict = {"num_images": int(hi.shape[0]), "images": {}, "per_lang": {}}
    images = {m: np.concatenate(v) for m, v in images.items()}
    result["images"] = images
    result.update(_scores(images, hi, np.ones(hi.shape[0], bool)))
    for lang in sorted(set(langs or ())):
        rows = np.asarray([x == lang for x in langs])
        result["per_lang"][lang] = {"num_images": int(rows.sum()), **_scores(images, hi, rows)}
    return result


def _scores(images: dict, hi: np.ndarray, rows: np.ndarray) -> dict:
    out = {}
    for m in METHODS:
        a, b = images[m][rows], hi[rows]
        out[f"{m}_psnr"] = float(np.mean(np.minimum(psnr(a, b), 100.0)))
        out[f"{m}_mse"] = float(np.mean(mse(a, b)))
        out[f"{m}_l1"] = float(np.mean(l1(a, b)))
    return out


def report_lines(result: dict, prefix: str = "") -> list[str]:
    """Printable lines: per method, per language, then a summary; the last line is
    `sr_psnr=<a> bicubic_psnr=<b> vq_recon_psnr=<c> sr_mse=<d> bicubic_mse=<e>` (PSNR: higher
    is better). `prefix` (e.g. `"[exact] "`) starts every line but the last.
    """
    lines = [
        f"{prefix}{m}: psnr={result[f'{m}_psnr']:.2f}dB mse={result[f'{m}_mse']:.1f} "
        f"l1={result[f'{m}_l1']:.4f}"
        for m in METHODS
    ]
    for lang, r in result.get("per_lang", {}).items():
        lines.append(
            f"{prefix}{lang} ({r['num_images']} images): "
            + " ".join(f"{m}_psnr={r[f'{m}_psnr']:.2f}" for m in METHODS)
            + f" sr_beats_bicubic={r['sr_psnr'] > r['bicubic_psnr']}"
        )
    lines.append(
        f"{prefix}images={result['num_images']} "
        f"sr_beats_bicubic={result['sr_psnr'] > result['bicubic_psnr']}"
    )
    lines.append(
        f"sr_psnr={result['sr_psnr']:.2f} bicubic_psnr={result['bicubic_psnr']:.2f} "
        f"vq_recon_psnr={result['vq_recon_psnr']:.2f} sr_mse={result['sr_mse']:.1f} "
        f"bicubic_mse={result['bicubic_mse']:.1f}"
    )
    return lines


def contact_sheet(result: dict, hi_images_uint8: np.ndarray, num: int = 8, scale: int = 2):
    """uint8 picture, one row per image: low-res decode | bicubic | stage III | ground truth.

    The low-res decode is shown at the high-res size by pixel repetition (nearest).
    """
    hi = np.asarray(hi_images_uint8)[:num]
    lo = result["images"]["lowres"][:num]
    rep = hi.shape[1] // lo.shape[1]
    columns = [
        lo.repeat(rep, 1).repeat(hi.shape[2] // lo.shape[2], 2),
        result["images"]["bicubic"][:num],
        result["images"]["sr"][:num],
        hi,
    ]
    tiles = np.stack(columns, axis=1).reshape(-1, *hi.shape[1:])
    return outputs.contact_sheet(tiles, columns=len(columns), scale=scale)


def demo_ground_truth(
    num: int, seed: int = 0, langs: Sequence[str] = ("en",)
) -> tuple[np.ndarray, list[str], list[str]]:
    """Held-out demo scenes (64×64 renderings): images, captions and caption languages.

    `num` scenes; each appears once per language in `langs` (the same scene is captioned in
    English and Chinese), scenes in order, languages inside a scene in `langs` order.
    """
    prompts = [p for p in shapes.eval_prompts(num, seed) if p["lang"] in langs]
    images = np.stack([shapes.render(shapes.SceneSpec.from_json(p["spec"])) for p in prompts])
    return images, [p["caption"] for p in prompts], [p["lang"] for p in prompts]


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
    """An `SRProducer` from a stage-III model (`sampling.nktp.sample_hires_codes`).

    Captions get the high-res resolution in front, as in stage-III data; codes are limited to
    the VQ codebook; the default is greedy, unguided, `k` = the model's K, fast mode.
    """
    f = vq_cfg.downsample_factor
    scfg = scfg or SamplingConfig(cfg_scale=1.0, temperature=0.0)
    scfg = dataclasses.replace(scfg, codebook_size=vq_cfg.codebook_size)
    k = k or model_cfg.nktp_k

    weights = decoder.prepare(frozen, trainable, model_cfg, scfg.codebook_size)

    def produce(captions: Sequence[str], lo_codes: np.ndarray, hi_grid, seed: int, first: int):
        texts = [
            tokenize(formats.resolution_prompt(hi_grid[1] * f, hi_grid[0] * f, c)) for c in captions
        ]
        codes, _ = nktp.sample_hires_codes(
            weights,
            None,
            model_cfg,
            texts,
            lo_codes,
            hi_grid,
            k,
            mode,
            text_len=text_len,
            scfg=scfg,
            seed=seed,
            row_ids=options.prompt_rows(first, len(captions)),
        )
        return codes

    return produce
