"""The flags every sampling command shares: which model (`--checkpoint`, `--step`, `--vq`,
`--weights`)
and how to draw (`--cfg-scale`, `--temperature`, `--top-k`, `--top-p`, `--candidates`,
`--judge`, `--blank_std`, `--blank_redraws`; unset ones take the model's own tuned defaults,
so a preset's sampling applies to every command alike)."""

from __future__ import annotations

import argparse

from mars_jax import cli, runs
from mars_jax.sampling import options


def add_checkpoint_args(p: cli.Parser, flag: str = "--checkpoint") -> None:
    p.add_argument(flag, required=True, help="a training run, one of its steps, or a bundle")
    p.add_argument(
        "--step", type=int, default=None, help="checkpoint step of a run (default: latest)"
    )
    p.add_argument("--vq", default=None, help="VQ tokenizer dir (default: the model's)")
    add_weights_arg(p)


def add_weights_arg(p: cli.Parser) -> None:
    """`--weights`: a run's moving average of its weights or the optimizer's weights."""
    p.add_argument(
        "--weights", default=None, choices=runs.WEIGHTS,
        help="ema: the run's moving average of its weights (optim.ema_decay), trained: the "
        "optimizer's weights (default: ema when the run kept one)",
    )  # fmt: skip


def add_sampling_args(p: cli.Parser) -> None:
    """`--cfg-scale`, `--temperature`, `--top-k`, `--top-p`, `--candidates`, `--judge`,
    `--blank_std`, `--blank_redraws`; unset ones come from the model."""
    for name, value in options.run_options({}).items():
        choices = f"{' or '.join(options.JUDGES)}; " if name == "judge" else ""
        p.add_argument(
            f"--{name}", type=type(value), default=None,
            help=f"{choices}default: the model's sample.{name} (else {value})",
        )  # fmt: skip


def fill_sampling_args(args: argparse.Namespace, checkpoint: str) -> argparse.Namespace:
    """Options left unset take the model's own `sample` settings (a preset's tuned sampling
    then applies to every command alike)."""
    for name, value in runs.sample_defaults(checkpoint).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    check_candidates(args.candidates, checkpoint)
    return args


def fill_caption_candidates(args: argparse.Namespace, checkpoint: str) -> argparse.Namespace:
    """`--candidates` of the commands that write captions (their other sampling flags have
    their own defaults): unset, the model's `sample.caption_candidates` (0 there: its
    `sample.candidates`); checked as `fill_sampling_args` checks it."""
    if args.candidates is None:
        args.candidates = runs.caption_candidates(checkpoint)
    check_candidates(args.candidates, checkpoint)
    return args


def check_candidates(candidates: int, checkpoint: str) -> None:
    """Best of N ranks with both directions: the model must have trained the caption task."""
    if candidates > 1 and not runs.trained_captions(checkpoint):
        raise cli.UsageError(
            f"--candidates={candidates}: outputs are ranked by the model's own captions, "
            f"but {checkpoint} trained no caption task (data.caption_ratio=0); use --candidates=1"
        )


# What the commands that write captions use where a flag is unset: greedy, the full softmax.
CAPTION_DEFAULTS = {"temperature": 0.0, "top_k": 0, "top_p": 1.0}


def caption_sampling(args: argparse.Namespace) -> options.SamplingConfig:
    """How `caption` and `evaluate --bench=captions` write captions: `--temperature`,
    `--top_k`, `--top_p` (unset: `CAPTION_DEFAULTS`) and `--candidates` (after
    `fill_caption_candidates`); no guidance. Bad values raise here, before a model loads."""
    given = {name: getattr(args, name) for name in CAPTION_DEFAULTS}
    return options.SamplingConfig(
        cfg_scale=1.0,
        candidates=args.candidates,
        **{name: CAPTION_DEFAULTS[name] if v is None else v for name, v in given.items()},
    )


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The sampling flags' values by option name (after `fill_sampling_args`)."""
    return {name: getattr(args, name) for name in options.RUN_OPTIONS}


def sampling_config(args: argparse.Namespace) -> options.SamplingConfig:
    """The `SamplingConfig` of the sampling flags (after `fill_sampling_args`)."""
    return options.SamplingConfig(**sampling_kwargs(args))
