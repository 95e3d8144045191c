"""Sampling CLI: prompts → PNG images (and a contact sheet) from a trained run.

    python -m mars_jax.generate --checkpoint=<workdir> --prompt="a red circle on the left" \
        --out=samples/ [--prompt-file=prompts.txt] [--num-per-prompt=4] [--cfg-scale=1.5] \
        [--temperature=1.0] [--top-k=0] [--top-p=1.0] [--seed=0] [--resolution=256x384]

The run's resolved config (saved in every checkpoint) says which model, text slot and VQ
tokenizer it used; the frozen LLM is reloaded from the base the run recorded and checked
against the recorded hash. `--resolution` is for stage-II models: the resolution goes into
the prompt as in training and sets the code grid. `--interleaved` continues each prompt
as text that may open images (paper §4.6). `--sr-from=<low-res image>` super-resolves with a
stage-III run, `--nktp=K` codes per pass, `--nktp-mode=fast|exact` (docs/NKTP.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

from mars_jax import outputs, runs
from mars_jax.data import image_ops
from mars_jax.sampling import images as images_lib
from mars_jax.sampling import interleaved, options
from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.vq import images as vq_images

CASCADE_SHEET_FILE = "cascade_contact_sheet.png"


def read_prompts(prompt: list[str] | None, prompt_file: str | None) -> list[str]:
    prompts = list(prompt or [])
    if prompt_file:
        with open(prompt_file, encoding="utf-8") as f:
            prompts += [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ValueError("no prompt: pass --prompt=... or --prompt-file=...")
    return prompts


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """`--cfg-scale`, `--temperature`, `--top-k`, `--top-p`; unset ones come from the run."""
    for name, value in options.run_options({}).items():
        dash = name.replace("_", "-")
        p.add_argument(
            f"--{dash}", f"--{name}", dest=name, type=type(value), default=None,
            help=f"default: the run's sample.{name} (else {value})",
        )  # fmt: skip


def fill_sampling_args(args: argparse.Namespace, workdir: str) -> argparse.Namespace:
    """Options left unset take the run's `sample` settings: a preset's tuned sampling
    (e.g. the demo's temperature) then applies to `generate` and `evaluate` alike."""
    for name, value in runs.sample_defaults(workdir).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def sampling_config(args: argparse.Namespace) -> options.SamplingConfig:
    """The `SamplingConfig` of the sampling flags (after `fill_sampling_args`)."""
    return options.SamplingConfig(
        cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mars_jax.generate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--checkpoint", required=True, help="training workdir")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompt-file", "--prompt_file", dest="prompt_file", help="one prompt a line")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--num-per-prompt", "--num_per_prompt", dest="num_per_prompt", type=int, default=1
    )
    add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", default=None, help="WIDTHxHEIGHT for stage-II models")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    p.add_argument("--vq", default=None, help="VQ tokenizer dir (default: the run's)")
    p.add_argument(
        "--interleaved",
        action="store_true",
        help="joint text and image generation (paper §4.6): continue each prompt as text that "
        "may open images; writes interleaved_<n>.md with the text and images in order",
    )
    p.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=512)
    p.add_argument(
        "--sr-from",
        "--sr_from",
        dest="sr_from",
        default=None,
        help="stage-III models: super-resolve this low-res image (a file, or a folder of "
        "images, one prompt for all or one per image, in sorted order)",
    )
    p.add_argument("--nktp", type=int, default=0, help="codes per pass (0: the model's K)")
    p.add_argument(
        "--nktp-mode",
        "--nktp_mode",
        dest="nktp_mode",
        default="fast",
        choices=("fast", "exact"),
        help="fast: accept K drafted codes per pass; exact: keep those the next pass agrees with",
    )
    p.add_argument("--sr-sizes", "--sr_sizes", dest="sr_sizes", default=None, help="32x32:64x64")
    return p.parse_args(argv)


def read_low_res_images(path: str, lo_hw: tuple[int, int]) -> np.ndarray:
    """uint8 `[N, *lo_hw, 3]` from an image file or a folder of images (sorted)."""
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, f)
            for f in os.listdir(path)
            if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))
        )
        if not files:
            raise FileNotFoundError(f"--sr-from={path}: no .png/.jpg/.webp images in the folder")
    else:
        files = [path]
    return np.stack(
        [image_ops.resize_cover_crop(image_ops.load_rgb(f, f), lo_hw) for f in files]
    ).astype(np.uint8)


def run_super_resolution(args: argparse.Namespace, prompts: list[str]) -> int:
    """`--sr-from`: low-res image(s) + caption(s) → high-res image(s) with next-K decoding."""
    run = runs.load_run(args.checkpoint, args.vq)
    sizes = run.sr_sizes
    if args.sr_sizes:
        lo_hw, hi_hw = images_lib.parse_sizes(args.sr_sizes)
    elif sizes:
        lo_hw, hi_hw = sizes[0]
    else:
        raise ValueError(f"--checkpoint={args.checkpoint}: no stage-III sizes; pass --sr-sizes")
    low = read_low_res_images(args.sr_from, lo_hw)
    if len(prompts) == 1:
        prompts = prompts * len(low)
    if len(prompts) != len(low):
        raise ValueError(f"--sr-from: {len(low)} images but {len(prompts)} prompts")
    k = args.nktp or run.model_cfg.nktp_k
    high, _ = images_lib.super_resolve(
        run, prompts, low, lo_hw, hi_hw, sampling_config(args), k, args.nktp_mode, args.seed,
        args.batch_size,
    )  # fmt: skip
    sheet = outputs.save_pairs(args.out, prompts, low, high, CASCADE_SHEET_FILE)
    print(f"wrote {len(high)} high-res images ({k} codes per pass, {args.nktp_mode}); {sheet}")
    return 0


def write_interleaved(out_dir: str, index: int, prompt: str, segments, run) -> str:
    """Markdown with the text and the images of one continuation, in order."""
    tok = load_tokenizer()
    os.makedirs(out_dir, exist_ok=True)
    parts = [prompt]
    for j, seg in enumerate(segments):
        if seg.kind == "text":
            parts.append(tok.decode(seg.ids.tolist()))
            continue
        image = vq_images.decode_uint8(run.vq_params, run.vq_cfg, seg.ids[None])[0]
        name = f"interleaved_{index:04d}_{j:02d}.png"
        outputs.save_png(os.path.join(out_dir, name), image)
        parts.append(f"\n\n![image {j}]({name})\n\n")
    path = os.path.join(out_dir, f"interleaved_{index:04d}.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(parts) + "\n")
    return path


def run_interleaved(args: argparse.Namespace, prompts: list[str]) -> int:
    run = runs.load_run(args.checkpoint, args.vq)
    tok = load_tokenizer()
    text_scfg = options.SamplingConfig(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
    )
    image_scfg = dataclasses.replace(text_scfg, codebook_size=run.vq_cfg.codebook_size)
    for i, prompt in enumerate(prompts):
        segments = interleaved.generate_interleaved(
            run.frozen, run.trainable, run.model_cfg, tok.encode(prompt), run.grids[0],
            text_scfg, image_scfg, args.max_tokens, args.seed + i,
        )  # fmt: skip
        print(write_interleaved(args.out, i, prompt, segments, run))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    fill_sampling_args(args, args.checkpoint)
    prompts = read_prompts(args.prompt, args.prompt_file)
    prompts = [p for p in prompts for _ in range(args.num_per_prompt)]
    if args.interleaved:
        return run_interleaved(args, prompts)
    if args.sr_from:
        return run_super_resolution(args, prompts)
    run = runs.load_run(args.checkpoint, args.vq)
    images = images_lib.generate_images(
        run, prompts, sampling_config(args), args.seed, args.resolution, args.batch_size
    )
    sheet = outputs.save_samples(args.out, prompts, images)
    print(f"wrote {len(images)} images of step {run.step} to {args.out}; contact sheet {sheet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
