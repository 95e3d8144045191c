"""Cascade CLI: text → low-res image (stage I/II model) → high-res image (stage-III model).

    python -m mars_jax.cascade --base=<stage I/II workdir> --sr=<stage III workdir> \
        --prompt="a red circle on the left" --out=samples/ [--nktp=4] [--nktp-mode=fast|exact] \
        [--cfg-scale=S] [--temperature=T] [--sr-cfg-scale=1.0] [--sr-temperature=0] \
        [--resolution=256x256] [--sr-sizes=LOWxLOW:HIGHxHIGH] [--seed=0]

As in the paper (§3.4), the stage-III model is conditioned on the *generated* low-res image:
it is resized to the stage's low-res size (as data preparation does), encoded with the
stage-III run's VQ tokenizer, and the caption gets the high-res resolution in front
(`formats.resolution_prompt`, as in stage-III training data). High-res codes come from
`nktp_sampling.sample_hires_codes` with `--nktp` codes per pass (default: the model's K).
Text-to-image sampling options left unset take the `--base` run's `sample` settings, as in
`generate`. Writes `low_XXX.png`, `high_XXX.png`, `prompts.txt` and a contact sheet (low-res upscaled
by pixel repetition beside the high-res result).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

SHEET_FILE = "cascade_contact_sheet.png"


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


def sr_sizes_of_run(run) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(low-res, high-res) image sizes of the stage-III run's data buckets, from its manifest."""
    from mars_jax.data.pipeline import load_manifest  # noqa: PLC0415

    shards = run.config.data.get("shards") if hasattr(run.config, "data") else None
    if not shards:
        return []
    buckets = load_manifest(shards)["buckets"].values()
    return sorted(
        {
            (tuple(int(x) for x in b["lo_image_hw"]), tuple(int(x) for x in b["image_hw"]))
            for b in buckets
            if b.get("lo_image_hw")
        }
    )


def super_resolve(
    sr_run,
    captions: Sequence[str],
    low_images_uint8: np.ndarray,
    lo_hw: tuple[int, int],
    hi_hw: tuple[int, int],
    scfg,
    k: int,
    mode: str,
    seed: int = 0,
    batch_size: int = 16,
) -> tuple[np.ndarray, list]:
    """High-res uint8 images `[N, *hi_hw, 3]` from low-res images and their captions."""
    import jax.numpy as jnp  # noqa: PLC0415

    from mars_jax import generate, nktp_sampling  # noqa: PLC0415
    from mars_jax.data import image_ops  # noqa: PLC0415
    from mars_jax.text.tokenizer import load_tokenizer  # noqa: PLC0415
    from mars_jax.tokens import formats  # noqa: PLC0415
    from mars_jax.vq import model as vq_model  # noqa: PLC0415

    f = sr_run.vq_cfg.downsample_factor
    for name, (h, w) in (("low", lo_hw), ("high", hi_hw)):
        if h % f or w % f:
            raise ValueError(
                f"stage-III {name}-res size {w}x{h} is not a multiple of VQ factor {f}"
            )
    hi_grid = (hi_hw[0] // f, hi_hw[1] // f)
    tok = load_tokenizer()
    texts = [tok.encode(formats.resolution_prompt(hi_hw[1], hi_hw[0], c)) for c in captions]
    scfg = dataclasses.replace(scfg, codebook_size=sr_run.vq_cfg.codebook_size)
    out, infos = [], []
    for start in range(0, len(captions), batch_size):
        chunk = low_images_uint8[start : start + batch_size]
        lo = np.stack([image_ops.resize_cover_crop(Image.fromarray(x), lo_hw) for x in chunk])
        lo_codes = np.asarray(
            vq_model.encode(sr_run.vq_params, sr_run.vq_cfg, image_ops.to_model_input(lo))
        )
        codes, info = nktp_sampling.sample_hires_codes(
            sr_run.frozen,
            sr_run.trainable,
            sr_run.model_cfg,
            texts[start : start + batch_size],
            lo_codes,
            hi_grid,
            k,
            mode,
            text_len=sr_run.text_len,
            scfg=scfg,
            seed=seed + start,
        )
        out.append(generate.vq_decode_uint8(sr_run.vq_params, sr_run.vq_cfg, jnp.asarray(codes)))
        infos.append(info)
    return np.concatenate(out), infos


def save_cascade(out_dir: str, prompts: Sequence[str], low: np.ndarray, high: np.ndarray) -> str:
    """PNG files per prompt and a contact sheet of (low upscaled, high) pairs; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    for i, (lo, hi) in enumerate(zip(low, high, strict=True)):
        Image.fromarray(lo).save(os.path.join(out_dir, f"low_{i:03d}.png"))
        Image.fromarray(hi).save(os.path.join(out_dir, f"high_{i:03d}.png"))
    with open(os.path.join(out_dir, "prompts.txt"), "w", encoding="utf-8") as fh:
        fh.writelines(f"{i:03d}\t{p}\n" for i, p in enumerate(prompts))
    h, w = high.shape[1:3]
    pairs = []
    for lo, hi in zip(low, high, strict=True):
        up = np.asarray(Image.fromarray(lo).resize((w, h), Image.Resampling.NEAREST))
        pairs.append(np.concatenate([up, np.full((h, 2, 3), 128, np.uint8), hi], axis=1))
    sheet = np.concatenate(
        [np.concatenate([p, np.full((2, p.shape[1], 3), 128, np.uint8)]) for p in pairs]
    )
    path = os.path.join(out_dir, SHEET_FILE)
    Image.fromarray(sheet).save(path)
    return path


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mars_jax.cascade", description=__doc__.split("\n")[0]
    )
    p.add_argument("--base", required=True, help="stage I/II training workdir")
    p.add_argument("--sr", required=True, help="stage-III training workdir")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompt-file", "--prompt_file", dest="prompt_file")
    p.add_argument("--out", required=True)
    p.add_argument("--nktp", type=int, default=0, help="codes per pass (0: the model's K)")
    p.add_argument("--nktp-mode", "--nktp_mode", dest="nktp_mode", default="fast")
    from mars_jax import generate  # noqa: PLC0415

    generate.add_sampling_args(p)  # of the --base model; unset: that run's sample settings
    p.add_argument("--sr-cfg-scale", "--sr_cfg_scale", dest="sr_cfg_scale", type=float, default=1.0)
    p.add_argument(
        "--sr-temperature", "--sr_temperature", dest="sr_temperature", type=float, default=0.0
    )
    p.add_argument("--resolution", default=None, help="WIDTHxHEIGHT of the low-res stage-II image")
    p.add_argument(
        "--sr-sizes",
        "--sr_sizes",
        dest="sr_sizes",
        default=None,
        help="LOWxLOW:HIGHxHIGH stage-III sizes (default: the run's data buckets)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from mars_jax import generate, sampling  # noqa: PLC0415

    prompts = generate.read_prompts(args.prompt, args.prompt_file)
    generate.fill_sampling_args(args, args.base)
    base_scfg = sampling.SamplingConfig(
        cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
    )
    sr_scfg = sampling.SamplingConfig(cfg_scale=args.sr_cfg_scale, temperature=args.sr_temperature)
    base = generate.load_run(args.base)
    sr_run = generate.load_run(args.sr)
    if args.sr_sizes:
        lo_hw, hi_hw = parse_sizes(args.sr_sizes)
    else:
        sizes = sr_sizes_of_run(sr_run)
        if not sizes:
            raise ValueError(f"--sr={args.sr}: its data names no stage-III sizes; pass --sr-sizes")
        lo_hw, hi_hw = sizes[0]
    k = args.nktp or sr_run.model_cfg.nktp_k
    low = generate.generate_images(
        base, prompts, base_scfg, args.seed, args.resolution, args.batch_size
    )
    high, infos = super_resolve(
        sr_run, prompts, low, lo_hw, hi_hw, sr_scfg, k, args.nktp_mode, args.seed, args.batch_size
    )
    sheet = save_cascade(args.out, prompts, low, high)
    passes = sum(i.passes for i in infos)
    print(f"wrote {len(prompts)} cascades to {args.out} ({sheet}); stage-III passes={passes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
