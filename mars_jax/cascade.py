"""Cascade CLI: text → low-res image (stage I/II model) → high-res image (stage-III model).

    python -m mars_jax.cascade --base=<stage I/II model> --sr=<stage III model> \
        --prompt="a red circle on the left" --out=samples/ [--nktp=4] [--nktp-mode=fast|exact] \
        [--cfg-scale=S] [--temperature=T] [--sr-cfg-scale=1.0] [--sr-temperature=0] \
        [--resolution=256x256] [--sr-sizes=LOWxLOW:HIGHxHIGH] [--seed=0]

As in the paper (§3.4), the stage-III model is conditioned on the *generated* low-res image:
it is resized to the stage's low-res size (as data preparation does), encoded with the
stage-III run's VQ tokenizer, and the caption gets the high-res resolution in front
(`formats.resolution_prompt`, as in stage-III training data). High-res codes come from
`sampling.nktp.sample_hires_codes` with `--nktp` codes per pass (default: the model's K).
Either model may be a run, a step of one or an exported bundle. The stage-III size whose
aspect ratio matches the low-res image is used (`--sr-sizes` to choose). Text-to-image
sampling options left unset take the `--base` model's settings, as in `generate`. Writes `low_XXX.png`, `high_XXX.png`, `prompts.txt` and a contact sheet (low-res upscaled
by pixel repetition beside the high-res result).
"""

from __future__ import annotations

import argparse
import sys

from mars_jax import cli, generate, outputs, runs, sample_flags
from mars_jax.sampling import images as images_lib
from mars_jax.sampling import options

SHEET_FILE = generate.CASCADE_SHEET_FILE


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = cli.parser("cascade", __doc__)
    p.add_argument("--base", required=True, help="stage I/II model: run, step or bundle")
    p.add_argument("--sr", required=True, help="stage-III model: run, step or bundle")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompt_file", help="one prompt a line")
    p.add_argument("--out", required=True)
    p.add_argument("--nktp", type=int, default=0, help="codes per pass (0: the model's K)")
    p.add_argument("--nktp_mode", default="fast", choices=("fast", "exact"))
    sample_flags.add_sampling_args(p)  # of the --base model; unset: its own sample settings
    p.add_argument("--sr_cfg_scale", type=float, default=1.0)
    p.add_argument("--sr_temperature", type=float, default=0.0)
    p.add_argument("--resolution", default=None, help="WIDTHxHEIGHT of the low-res image")
    p.add_argument("--sr_sizes", default=None, help="LOWxLOW:HIGHxHIGH (default: matching)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=16)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with cli.one_line_errors():
        prompts = cli.read_prompts(args.prompt, args.prompt_file)
        runs.locate(args.base, flag="--base")
        runs.locate(args.sr, flag="--sr")
        if not runs.describe(args.sr).get("sr_sizes") and not args.sr_sizes:
            raise cli.UsageError(f"--sr={args.sr}: not a stage-III model (no low-/high-res sizes)")
        if args.sr_sizes:
            images_lib.parse_sizes(args.sr_sizes)
        sample_flags.fill_sampling_args(args, args.base)
        sr_scfg = options.SamplingConfig(
            cfg_scale=args.sr_cfg_scale, temperature=args.sr_temperature
        )
        base = runs.load_run(args.base)
        sr_run = runs.load_run(args.sr)
        low = images_lib.generate_images(
            base,
            prompts,
            sample_flags.sampling_config(args),
            args.seed,
            args.resolution,
            args.batch_size,
        )
        if args.sr_sizes:
            lo_hw, hi_hw = images_lib.parse_sizes(args.sr_sizes)
        else:
            lo_hw, hi_hw = images_lib.matching_sr_size(sr_run.sr_sizes, low.shape[1:3])
        k = args.nktp or sr_run.model_cfg.nktp_k
        high, infos = images_lib.super_resolve(
            sr_run, prompts, low, lo_hw, hi_hw, sr_scfg, k, args.nktp_mode, args.seed,
            args.batch_size,
        )  # fmt: skip
        sheet = outputs.save_pairs(args.out, prompts, low, high, SHEET_FILE)
    passes = sum(i.passes for i in infos)
    print(f"wrote {len(prompts)} cascades to {args.out} ({sheet}); stage-III passes={passes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
