"""Cascade CLI: text → low-res image (stage I/II model) → high-res image (stage-III model).

    python -m mars_jax.cascade --base=<stage I/II workdir> --sr=<stage III workdir> \
        --prompt="a red circle on the left" --out=samples/ [--nktp=4] [--nktp-mode=fast|exact] \
        [--cfg-scale=S] [--temperature=T] [--sr-cfg-scale=1.0] [--sr-temperature=0] \
        [--resolution=256x256] [--sr-sizes=LOWxLOW:HIGHxHIGH] [--seed=0]

As in the paper (§3.4), the stage-III model is conditioned on the *generated* low-res image:
it is resized to the stage's low-res size (as data preparation does), encoded with the
stage-III run's VQ tokenizer, and the caption gets the high-res resolution in front
(`formats.resolution_prompt`, as in stage-III training data). High-res codes come from
`sampling.nktp.sample_hires_codes` with `--nktp` codes per pass (default: the model's K).
Text-to-image sampling options left unset take the `--base` run's `sample` settings, as in
`generate`. Writes `low_XXX.png`, `high_XXX.png`, `prompts.txt` and a contact sheet (low-res upscaled
by pixel repetition beside the high-res result).
"""

from __future__ import annotations

import argparse
import sys

from mars_jax import generate, outputs, runs
from mars_jax.sampling import images as images_lib
from mars_jax.sampling import options

SHEET_FILE = generate.CASCADE_SHEET_FILE


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
    prompts = generate.read_prompts(args.prompt, args.prompt_file)
    generate.fill_sampling_args(args, args.base)
    sr_scfg = options.SamplingConfig(cfg_scale=args.sr_cfg_scale, temperature=args.sr_temperature)
    base = runs.load_run(args.base)
    sr_run = runs.load_run(args.sr)
    if args.sr_sizes:
        lo_hw, hi_hw = images_lib.parse_sizes(args.sr_sizes)
    elif sr_run.sr_sizes:
        lo_hw, hi_hw = sr_run.sr_sizes[0]
    else:
        raise ValueError(f"--sr={args.sr}: its data names no stage-III sizes; pass --sr-sizes")
    k = args.nktp or sr_run.model_cfg.nktp_k
    low = images_lib.generate_images(
        base, prompts, generate.sampling_config(args), args.seed, args.resolution, args.batch_size
    )
    high, infos = images_lib.super_resolve(
        sr_run, prompts, low, lo_hw, hi_hw, sr_scfg, k, args.nktp_mode, args.seed, args.batch_size
    )
    sheet = outputs.save_pairs(args.out, prompts, low, high, SHEET_FILE)
    passes = sum(i.passes for i in infos)
    print(f"wrote {len(prompts)} cascades to {args.out} ({sheet}); stage-III passes={passes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
