"""Prompts → pixels for a trained model: tokenizing in the training format, batching, VQ
decoding, and the stage-III cascade (text → low-res image → high-res image, paper §3.4)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from mars_jax.data import image_ops
from mars_jax.model import decoder
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import caption, nktp, options, rerank, t2i
from mars_jax.sampling.options import SamplingConfig
from mars_jax.text import languages
from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.tokens import formats
from mars_jax.vq import images as vq_images


@dataclasses.dataclass
class TrainedModel:
    """What sampling needs of a trained model."""

    frozen: dict
    trainable: dict
    model_cfg: ModelConfig
    text_len: int
    vq_cfg: object  # vq.config.VQConfig
    vq_params: dict
    grids: list[tuple[int, int]]  # code grids it was trained on (stage III: high-res)
    sr_sizes: list = dataclasses.field(default_factory=list)  # stage III: (lo_hw, hi_hw) pairs
    # Stage II/III captions start with the output resolution ("256x384 caption"), stage I's
    # do not: samplers write prompts the way the model was trained.
    resolution_prefix: bool = False


def parse_resolution(text: str, factor: int) -> tuple[int, int]:
    """`"256x384"` (width x height) → code grid (h, w); both must be multiples of `factor`."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"--resolution={text!r}: expected WIDTHxHEIGHT, e.g. 256x384") from e
    if width % factor or height % factor:
        raise ValueError(
            f"--resolution={text!r}: sides must be multiples of the VQ factor {factor}"
        )
    return height // factor, width // factor


def parse_sizes(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """`"32x32:64x64"` (width x height, low:high) → ((lo_h, lo_w), (hi_h, hi_w))."""
    try:
        low, high = text.split(":")
        lo_w, lo_h = (int(v) for v in low.lower().split("x"))
        hi_w, hi_h = (int(v) for v in high.lower().split("x"))
    except ValueError as e:
        raise ValueError(
            f"--sr-sizes={text!r}: expected LOWWxLOWH:HIGHWxHIGHH, e.g. 32x32:64x64"
        ) from e
    return (lo_h, lo_w), (hi_h, hi_w)


def choose_grid(
    resolution: str | None,
    grids: Sequence[tuple[int, int]],
    factor: int,
    resolution_prefix: bool,
) -> tuple[int, int]:
    """The code grid to sample: `resolution` (`WIDTHxHEIGHT`), which must be one the model
    trained on, or its first grid. Checkable before any weight is loaded."""
    trained = [tuple(int(x) for x in g) for g in grids]
    if not resolution:
        return trained[0]
    if not resolution_prefix:
        raise ValueError(
            f"--resolution={resolution}: this model was trained at one resolution "
            f"({trained[0][1] * factor}x{trained[0][0] * factor}) without a resolution prompt"
        )
    grid = parse_resolution(resolution, factor)
    if grid not in trained:
        sizes = ", ".join(f"{w * factor}x{h * factor}" for h, w in trained)
        raise ValueError(f"--resolution={resolution}: not one the model trained on ({sizes})")
    return grid


def prompt_texts(
    prompts: Sequence[str], grid: tuple[int, int], factor: int, resolution_prefix: bool
) -> list[str]:
    """Prompts as the model was trained on them: with the output resolution in front for
    stage II/III models (`formats.resolution_prompt`)."""
    if not resolution_prefix:
        return list(prompts)
    return [formats.resolution_prompt(grid[1] * factor, grid[0] * factor, p) for p in prompts]


@dataclasses.dataclass
class Drawn:
    """Codes drawn for prompts: the kept image's `[B, h, w]`; with `candidates` = N > 1 also
    every candidate `[B, N, h, w]` in draw order and its caption score `[B, N]`, the
    candidates' decoded images `[B, N, H, W, 3]` (decoded once, for the pixel judge or the
    blank check) and which of them are blank `[B, N]` (None: not checked). One image per
    prompt: `images`, the kept images `[B, H, W, 3]` when the blank check decoded them."""

    codes: np.ndarray
    candidates: np.ndarray | None = None
    scores: np.ndarray | None = None
    candidate_images: np.ndarray | None = None
    blank: np.ndarray | None = None
    images: np.ndarray | None = None

    @property
    def kept_index(self) -> np.ndarray:
        """Which candidate each prompt kept `[B]` (the first highest score, a blank one only
        where all are, as `rerank.best_of` keeps it)."""
        return self.ranked_order[:, 0]

    @property
    def ranked_order(self) -> np.ndarray:
        """Each prompt's candidates in best of N's order `[B, N]`, the kept one first."""
        return np.argsort(-rerank.ranking_scores(self.scores, self.blank), axis=1, kind="stable")


def draw_codes(
    model: TrainedModel,
    prompts: Sequence[str],
    scfg: SamplingConfig,
    seed: int = 0,
    resolution: str | None = None,
    batch_size: int = 16,
) -> Drawn:
    """Image codes for prompts, reproducible by `seed` (see `generate_images`)."""
    tok = load_tokenizer()
    factor = model.vq_cfg.downsample_factor
    grid = choose_grid(resolution, model.grids, factor, model.resolution_prefix)
    texts = prompt_texts(prompts, grid, factor, model.resolution_prefix)
    scfg = dataclasses.replace(scfg, codebook_size=model.vq_cfg.codebook_size)
    weights = decoder.prepare(
        model.frozen, model.trainable, model.model_cfg, scfg.codebook_size,
        str(model.model_cfg.compute_dtype),
    )  # fmt: skip
    n = scfg.candidates
    per_call = max(1, batch_size // n)
    kept, drawn, scores, decoded, blank = [], [], [], [], []
    for start in range(0, len(texts), per_call):
        ids = [tok.encode(p) for p in texts[start : start + per_call]]
        codes = t2i.generate_codes(
            weights, None, model.model_cfg, [row for row in ids for _ in range(n)],
            model.text_len, grid, scfg, seed, options.prompt_rows(start, len(ids), n),
        )  # fmt: skip
        if n == 1:
            if scfg.blank_std > 0 and scfg.blank_redraws > 0:
                codes, pixels = _redraw_blank_prompts(
                    model, weights, ids, grid, scfg, seed, start, codes,
                    decode_images(model, codes, batch_size), batch_size,
                )  # fmt: skip
                decoded.append(pixels)
            kept.append(codes)
            continue
        # The prompt as the caption task saw it: without the resolution in front.
        captions = [tok.encode(p) for p in prompts[start : start + per_call] for _ in range(n)]
        seen, flat = codes, None
        if scfg.judge == "pixels" or scfg.blank_std > 0:
            pixels = decode_images(model, codes, batch_size)
            if scfg.blank_std > 0 and scfg.blank_redraws > 0:
                codes, pixels = _redraw_blank_prompts(
                    model, weights, ids, grid, scfg, seed, start, codes, pixels, batch_size
                )
            decoded.append(pixels.reshape(-1, n, *pixels.shape[1:]))
        if scfg.judge == "pixels":
            # What the captioner trained on: the encoder's codes of an image (about half of
            # a drawn grid's codes are ones the encoder would not give for its decode).
            seen = np.stack(encode_for_prompt(model, list(pixels)))
        if scfg.blank_std > 0:
            flat = rerank.blank_images(pixels, scfg.blank_std)
            blank.append(flat.reshape(-1, n))
        score = rerank.caption_log_likelihood(
            model.frozen, model.trainable, model.model_cfg, seen, captions
        )
        kept.append(rerank.best_of(codes, score, n, flat)[0])
        drawn.append(codes.reshape(-1, n, *codes.shape[1:]))
        scores.append(score.reshape(-1, n))
    if n == 1:
        return Drawn(np.concatenate(kept), images=np.concatenate(decoded) if decoded else None)
    images = np.concatenate(decoded) if decoded else None
    flags = np.concatenate(blank) if blank else None
    return Drawn(np.concatenate(kept), np.concatenate(drawn), np.concatenate(scores), images, flags)


def _redraw_blank_prompts(model, weights, ids, grid, scfg, seed, first, codes, pixels, batch_size):
    """No empty canvas kept where another draw gives one (`scfg.blank_redraws`): a prompt whose
    N candidates are all blank (with one image per prompt: whose draw is) draws its next N
    (candidates N..2N-1 of its row keys, those best of 2N would add) in their place, up to
    `blank_redraws` times. The whole call is drawn again (no new batch shape to compile);
    only those prompts take the new draws. `codes` `[B*N, h, w]` and their decodes `pixels`
    in, both updated out."""
    n = scfg.candidates
    codes, pixels = np.array(codes), np.array(pixels)
    for redraw in range(1, scfg.blank_redraws + 1):
        all_blank_B = rerank.blank_images(pixels, scfg.blank_std).reshape(-1, n).all(axis=1)
        redo = np.flatnonzero(np.repeat(all_blank_B, n))
        if not len(redo):
            break
        rows = options.prompt_rows(first, len(ids), n)
        rows[:, 1] += redraw * n
        again = np.asarray(
            t2i.generate_codes(
                weights, None, model.model_cfg, [row for row in ids for _ in range(n)],
                model.text_len, grid, scfg, seed, rows,
            )
        )  # fmt: skip
        codes[redo] = again[redo]
        pixels[redo] = decode_images(model, again[redo], batch_size)
    return codes, pixels


def decode_images(model: TrainedModel, codes_Nxhxw: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """uint8 images `[N, H, W, 3]` of codes, decoded `batch_size` at a time."""
    out = [
        vq_images.decode_uint8(model.vq_params, model.vq_cfg, codes_Nxhxw[i : i + batch_size])
        for i in range(0, len(codes_Nxhxw), batch_size)
    ]
    return np.concatenate(out)


def candidate_images(model: TrainedModel, drawn: Drawn, batch_size: int = 16) -> np.ndarray:
    """Every candidate's image `[B, N, H, W, 3]`: the draw's decodes, else decoded."""
    if drawn.candidate_images is not None:
        return drawn.candidate_images
    b, n = drawn.candidates.shape[:2]
    pixels = decode_images(
        model, drawn.candidates.reshape(b * n, *drawn.codes.shape[1:]), batch_size
    )
    return pixels.reshape(b, n, *pixels.shape[1:])


def kept_images(model: TrainedModel, drawn: Drawn, batch_size: int = 16) -> np.ndarray:
    """The kept image of each prompt `[B, H, W, 3]`, taken from the draw's decodes when it
    made them."""
    if drawn.candidate_images is None:
        if drawn.images is not None:
            return drawn.images
        return decode_images(model, drawn.codes, batch_size)
    index_B = drawn.kept_index
    return drawn.candidate_images[np.arange(len(index_B)), index_B]


def generate_images(
    model: TrainedModel,
    prompts: Sequence[str],
    scfg: SamplingConfig,
    seed: int = 0,
    resolution: str | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """uint8 images `[len(prompts), H, W, 3]`, one per prompt, reproducible by `seed`.

    `resolution` (`WIDTHxHEIGHT`, stage-II/III models) picks one of the trained grids
    (default: the first); the prompts get the training format (`prompt_texts`). With
    `scfg.candidates` = N > 1, N images are drawn per prompt and the one whose caption
    likelihood of the prompt is highest is kept (`rerank.py`); `batch_size` counts images
    drawn per call, so a call holds `batch_size // N` prompts (at least one).
    """
    drawn = draw_codes(model, prompts, scfg, seed, resolution, batch_size)
    return kept_images(model, drawn, batch_size)


def matching_sr_size(
    sr_sizes: Sequence, image_hw: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The stage-III `(lo_hw, hi_hw)` bucket whose aspect ratio is closest to `image_hw`'s
    (a 256×384 base image keeps its shape instead of being cropped square)."""
    if not sr_sizes:
        raise ValueError("the stage-III model names no low-/high-res sizes; pass --sr-sizes")
    aspect = image_hw[1] / image_hw[0]
    return min(sr_sizes, key=lambda size: abs(math.log(size[0][1] / size[0][0] / aspect)))


def super_resolve(
    model: TrainedModel,
    captions: Sequence[str],
    low_images_uint8: np.ndarray,
    lo_hw: tuple[int, int],
    hi_hw: tuple[int, int],
    scfg: SamplingConfig,
    k: int,
    mode: str,
    seed: int = 0,
    batch_size: int = 16,
) -> tuple[np.ndarray, list[nktp.DecodeInfo]]:
    """High-res uint8 images `[N, *hi_hw, 3]` from low-res images and their captions.

    As in stage-III data, the low-res image is resized to the stage's low-res size and
    VQ-encoded, and the caption gets the high-res resolution in front.
    """
    f = model.vq_cfg.downsample_factor
    for name, (h, w) in (("low", lo_hw), ("high", hi_hw)):
        if h % f or w % f:
            raise ValueError(
                f"stage-III {name}-res size {w}x{h} is not a multiple of VQ factor {f}"
            )
    hi_grid = (hi_hw[0] // f, hi_hw[1] // f)
    tok = load_tokenizer()
    texts = [tok.encode(formats.resolution_prompt(hi_hw[1], hi_hw[0], c)) for c in captions]
    scfg = dataclasses.replace(scfg, codebook_size=model.vq_cfg.codebook_size)
    weights = decoder.prepare(model.frozen, model.trainable, model.model_cfg, scfg.codebook_size)
    out, infos = [], []
    for start in range(0, len(captions), batch_size):
        chunk = low_images_uint8[start : start + batch_size]
        lo = np.stack([image_ops.resize_cover_crop(Image.fromarray(x), lo_hw) for x in chunk])
        lo_codes = vq_images.encode_uint8(model.vq_params, model.vq_cfg, lo)
        codes, info = nktp.sample_hires_codes(
            weights, None, model.model_cfg, texts[start : start + batch_size], lo_codes,
            hi_grid, k, mode, text_len=model.text_len, scfg=scfg, seed=seed,
            row_ids=options.prompt_rows(start, len(chunk)),
        )  # fmt: skip
        out.append(vq_images.decode_uint8(model.vq_params, model.vq_cfg, codes))
        infos.append(info)
    return np.concatenate(out), infos


def encode_for_prompt(model: TrainedModel, images_uint8: Sequence[np.ndarray]) -> list[np.ndarray]:
    """VQ codes `[h, w]` of each image at the model's first trained size (resized and
    centre-cropped, as data preparation does), to put into a prompt."""
    if not len(images_uint8):
        return []
    f = model.vq_cfg.downsample_factor
    h, w = model.grids[0]
    pixels = np.stack(
        [image_ops.resize_cover_crop(Image.fromarray(x), (h * f, w * f)) for x in images_uint8]
    )
    return list(vq_images.encode_uint8(model.vq_params, model.vq_cfg, pixels))


def caption_images(
    model: TrainedModel,
    images_uint8: Sequence[np.ndarray],
    scfg: SamplingConfig,
    max_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 16,
    lang: str = languages.ANY,
    first: int = 0,
) -> list[str]:
    """A caption per image (image → text, the stage-I captioning task), in `lang` (`en`,
    `zh`, or `any`: the model's choice). `first`: the index of `images_uint8[0]` in the
    caller's list, for the draws of a list captioned in parts (`options.row_keys`).

    Each image is resized and centre-cropped to the model's first trained size, as data
    preparation does, then VQ-encoded. With `scfg.candidates` = N > 1 the candidates are the
    caption at `scfg.temperature` and N - 1 drawn at that temperature (1 where it is 0,
    greedy), and the one that best explains the image both ways is kept (`rerank.py`).
    """
    tok = load_tokenizer()
    weights = decoder.prepare(
        model.frozen, model.trainable, model.model_cfg, None, str(model.model_cfg.compute_dtype)
    )
    n = scfg.candidates
    drawn_scfg = dataclasses.replace(scfg, temperature=scfg.temperature or 1.0)
    out = []
    for start in range(0, len(images_uint8), batch_size):
        codes = np.stack(encode_for_prompt(model, images_uint8[start : start + batch_size]))
        ids = caption.caption_codes(
            weights, None, model.model_cfg, codes, scfg, max_tokens, seed, lang,
            row_ids=options.prompt_rows(first + start, len(codes)),
        )  # fmt: skip
        if n > 1:
            more_rows = options.prompt_rows(first + start, len(codes), n)
            more = caption.caption_codes(
                weights, None, model.model_cfg, codes, drawn_scfg, max_tokens, seed, lang,
                row_ids=more_rows[more_rows[:, 1] > 0], copies=n - 1,
            )  # fmt: skip
            ids = best_captions(model, codes, ids, more, n)
        out += [tok.decode(row) for row in ids]
    return out


def best_captions(
    model: TrainedModel,
    codes_Bxhxw: np.ndarray,
    first: Sequence[Sequence[int]],
    more: Sequence[Sequence[int]],
    n: int,
) -> list[list[int]]:
    """Per image, of its caption in `first` and its `n - 1` in `more` (consecutive), the one
    with the highest `log p(caption | image) + log p(image | caption)`."""
    candidates = [
        [list(first[i]), *(list(c) for c in more[i * (n - 1) : (i + 1) * (n - 1)])]
        for i in range(len(first))
    ]
    flat = [c for group in candidates for c in group]
    codes = np.repeat(np.asarray(codes_Bxhxw), n, axis=0)
    args = (model.frozen, model.trainable, model.model_cfg, codes)
    scores = rerank.caption_log_likelihood(*args, flat) + rerank.image_log_likelihood(
        *args, flat, model.text_len
    )
    _, index = rerank.best_of(np.arange(len(flat)), scores, n)
    return [candidates[i][k] for i, k in enumerate(index)]
