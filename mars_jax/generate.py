"""Sampling CLI: prompts → PNG images (and a contact sheet) from a trained model.

    python -m mars_jax.generate --checkpoint=<run | run/checkpoints/N | bundle> \
        --prompt="a red circle on the left" --out=samples/ [--prompt-file=prompts.txt] \
        [--num-per-prompt=4] [--cfg-scale=1.5] [--temperature=1.0] [--top-k=0] [--top-p=1.0] \
        [--candidates=8] [--seed=0] [--resolution=256x384] [--step=N]

Prompts are written the way the model was trained: stage-II/III models get the output
resolution in front (`--resolution`, one of the sizes the model trained on; default its
first). Unset sampling flags take the model's own defaults. `--candidates=N` draws N images
per prompt and keeps the one whose caption likelihood of the prompt, by the model's own
image → text direction, is highest (models trained with captions; `sampling/rerank.py`).
`--interleaved` continues each prompt as text that may open images (paper §4.6);
`--image=<file>` puts images into that prompt. `--sr-from=<low-res image>` super-resolves with a stage-III model, `--nktp=K` codes
per pass, `--nktp-mode=fast|exact` (docs/NKTP.md).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

from mars_jax import cli, outputs, runs, sample_flags
from mars_jax.data import image_ops
from mars_jax.sampling import images as images_lib
from mars_jax.sampling import interleaved, options
from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.vq import checkpoint as vq_checkpoint
from mars_jax.vq import images as vq_images

CASCADE_SHEET_FILE = "cascade_contact_sheet.png"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = cli.parser("generate", __doc__)
    sample_flags.add_checkpoint_args(p)
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompt_file", help="one prompt a line")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num_per_prompt", type=int, default=1)
    sample_flags.add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", default=None, help="WIDTHxHEIGHT (stage-II/III models)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument(
        "--interleaved", action="store_true",
        help="joint text and image generation (paper §4.6): continue each prompt as text that "
        "may open images; writes interleaved_<n>.md with the text and images in order",
    )  # fmt: skip
    p.add_argument("--image", action="append", help="--interleaved: an image in the prompt")
    p.add_argument("--max_tokens", type=int, default=512)
    p.add_argument(
        "--sr_from", default=None,
        help="stage-III models: super-resolve this low-res image (a file, or a folder of "
        "images, one prompt for all or one per image, in sorted order)",
    )  # fmt: skip
    p.add_argument("--nktp", type=int, default=0, help="codes per pass (0: the model's K)")
    p.add_argument(
        "--nktp_mode", default="fast", choices=("fast", "exact"),
        help="fast: accept K drafted codes per pass; exact: keep those the next pass agrees with",
    )  # fmt: skip
    p.add_argument("--sr_sizes", default=None, help="LOWxLOW:HIGHxHIGH (default: the model's)")
    args = p.parse_args(argv)
    if args.num_per_prompt < 1 or args.batch_size < 1 or args.max_tokens < 1:
        p.error("--num-per-prompt, --batch-size and --max-tokens must be >= 1")
    if args.image and not args.interleaved:
        p.error("--image goes with --interleaved (images in the prompt)")
    if args.interleaved and args.sr_from:
        p.error("--interleaved and --sr-from exclude each other")
    return args


def check_before_loading(args: argparse.Namespace) -> dict:
    """Every flag that can be checked without weights: the model's facts, the resolution."""
    where = runs.locate(args.checkpoint, args.step)
    info = runs.describe(args.checkpoint, args.step)
    vq_dir = args.vq or (os.path.join(where.root, "vq") if where.kind == "bundle" else "")
    vq_dir = vq_dir or info.get("vq_dir", "")
    if not vq_dir:
        raise cli.UsageError(f"--checkpoint={args.checkpoint}: names no VQ tokenizer; pass --vq")
    factor = vq_checkpoint.load_config(vq_dir).downsample_factor
    if not args.sr_from and not args.interleaved:
        images_lib.choose_grid(args.resolution, info["grids"], factor, int(info["stage"]) >= 2)
    if args.sr_from and args.sr_sizes:
        images_lib.parse_sizes(args.sr_sizes)
    if args.sr_from and not args.sr_sizes and not info.get("sr_sizes"):
        raise cli.UsageError(f"--checkpoint={args.checkpoint}: not a stage-III model")
    return info


def read_low_res_images(paths: list[str], lo_hw: tuple[int, int]) -> np.ndarray:
    """uint8 `[N, *lo_hw, 3]` from image files or folders of images (sorted)."""
    files = cli.image_files(paths, "--sr-from")
    images = cli.read_images(files, "--sr-from")
    return np.stack(
        [image_ops.resize_cover_crop(Image.fromarray(x), lo_hw) for x in images]
    ).astype(np.uint8)


def run_super_resolution(args: argparse.Namespace, prompts: list[str]) -> str:
    """`--sr-from`: low-res image(s) + caption(s) → high-res image(s) with next-K decoding."""
    files = cli.image_files([args.sr_from], "--sr-from")
    if len(prompts) not in (1, len(files)):
        raise cli.UsageError(f"--sr-from: {len(files)} images but {len(prompts)} prompts")
    run = runs.load_run(args.checkpoint, args.step, args.vq, args.weights)
    if args.sr_sizes:
        lo_hw, hi_hw = images_lib.parse_sizes(args.sr_sizes)
    else:
        first = cli.read_images(files[:1], "--sr-from")[0]
        lo_hw, hi_hw = images_lib.matching_sr_size(run.sr_sizes, first.shape[:2])
    low = read_low_res_images([args.sr_from], lo_hw)
    prompts = prompts * len(low) if len(prompts) == 1 else prompts
    k = args.nktp or run.model_cfg.nktp_k
    high, _ = images_lib.super_resolve(
        run, prompts, low, lo_hw, hi_hw, sample_flags.sampling_config(args), k, args.nktp_mode,
        args.seed, args.batch_size,
    )  # fmt: skip
    sheet = outputs.save_pairs(args.out, prompts, low, high, CASCADE_SHEET_FILE)
    return f"wrote {len(high)} high-res images ({k} codes per pass, {args.nktp_mode}); {sheet}"


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


def run_interleaved(args: argparse.Namespace, prompts: list[str]) -> str:
    files = cli.image_files(args.image or [], "--image")
    pictures = cli.read_images(files, "--image")
    run = runs.load_run(args.checkpoint, args.step, args.vq, args.weights)
    tok = load_tokenizer()
    text_scfg = options.SamplingConfig(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
    )
    image_scfg = options.SamplingConfig(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        codebook_size=run.vq_cfg.codebook_size,
    )  # fmt: skip
    prompt_images = images_lib.encode_for_prompt(run, pictures)
    written = []
    for i, prompt in enumerate(prompts):
        ids = interleaved.prompt_with_images(tok.encode(prompt), prompt_images)
        segments = interleaved.generate_interleaved(
            run.frozen, run.trainable, run.model_cfg, ids, run.grids[0],
            text_scfg, image_scfg, args.max_tokens, args.seed + i,
        )  # fmt: skip
        written.append(write_interleaved(args.out, i, prompt, segments, run))
    return "\n".join(written)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with cli.one_line_errors():
        prompts = cli.read_prompts(args.prompt, args.prompt_file)
        prompts = [p for p in prompts for _ in range(args.num_per_prompt)]
        check_before_loading(args)
        sample_flags.fill_sampling_args(args, args.checkpoint)
        sample_flags.sampling_config(args)  # bad values, before the model loads
        if args.interleaved:
            print(run_interleaved(args, prompts))
            return 0
        if args.sr_from:
            print(run_super_resolution(args, prompts))
            return 0
        run = runs.load_run(args.checkpoint, args.step, args.vq, args.weights)
        drawn = images_lib.draw_codes(
            run,
            prompts,
            sample_flags.sampling_config(args),
            args.seed,
            args.resolution,
            args.batch_size,
        )
        images = images_lib.kept_images(run, drawn, args.batch_size)
        sheet = outputs.save_samples(args.out, prompts, images)
        if drawn.candidates is not None:
            n = drawn.candidates.shape[1]
            every = images_lib.candidate_images(run, drawn, args.batch_size)
            ranked = outputs.save_candidates(
                args.out, prompts, every, drawn.scores, drawn.ranked_order, drawn.blank
            )
            sheet += f"; the {n} candidates of each prompt, best first: {ranked}"
    averaged = " (its moving average)" if run.weights == "ema" else ""
    print(
        f"wrote {len(images)} images of step {run.step}{averaged} to {args.out}; "
        f"contact sheet {sheet}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
