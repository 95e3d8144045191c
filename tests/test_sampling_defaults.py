"""`generate` / `evaluate` sampling options: unset ones come from the run's `sample` config."""

import json

import pytest

from configs import stage1
from mars_jax import caption, evaluate, generate, sample_flags


def _workdir(tmp_path, sample, **sections):
    (tmp_path / "config.json").write_text(json.dumps({"sample": sample, **sections}))
    return str(tmp_path)


def test_unset_options_take_the_runs_sample_settings(tmp_path):
    workdir = _workdir(tmp_path, {"cfg_scale": 2.0, "temperature": 0.8, "top_k": 5})
    args = generate.parse_args(["--checkpoint", workdir, "--out", "o", "--prompt", "a"])
    sample_flags.fill_sampling_args(args, workdir)
    assert (args.cfg_scale, args.temperature, args.top_k) == (2.0, 0.8, 5)
    assert args.top_p == 1.0  # not in the run's config: the fallback
    given = ["--checkpoint", workdir, "--out", "o", "--temperature=1.0", "--top-k", "0"]
    args = sample_flags.fill_sampling_args(generate.parse_args(given), workdir)
    assert (args.temperature, args.top_k, args.cfg_scale) == (1.0, 0, 2.0)  # the CLI wins


@pytest.mark.parametrize(
    "sample, given, want",
    [
        ({"candidates": 8, "caption_candidates": 16}, [], 16),
        ({"candidates": 8}, [], 8),  # a run saved before caption_candidates: its candidates
        ({"candidates": 8, "caption_candidates": 0}, [], 8),  # 0: the same
        ({"candidates": 8, "caption_candidates": 16}, ["--candidates=3"], 3),  # the CLI wins
        ({}, [], 1),
    ],
)
def test_caption_commands_write_the_runs_caption_candidates(tmp_path, sample, given, want):
    """`caption` and `evaluate --bench=captions` take `sample.caption_candidates`, not the
    image commands' `sample.candidates`."""
    workdir = _workdir(tmp_path, sample, data={"caption_ratio": 0.2})
    for parse in (
        lambda a: caption.parse_args(["--checkpoint", workdir, "--image=x.png", *a]),
        lambda a: evaluate.build_parser().parse_args(
            ["--checkpoint", workdir, "--bench=captions", *a]
        ),
    ):
        args = sample_flags.fill_caption_candidates(parse(given), workdir)
        assert args.candidates == want
    if sample:
        args = sample_flags.fill_sampling_args(
            generate.parse_args(["--checkpoint", workdir, "--out", "o", "--prompt", "a"]), workdir
        )
        assert args.candidates == 8  # images: `sample.candidates`


def test_demo_preset_samples_at_its_measured_guidance_and_temperature():
    demo, paper = stage1.get_config("demo").sample, stage1.get_config("qwen7b").sample
    assert (demo.cfg_scale, demo.temperature) == pytest.approx((2.5, 0.4))
    assert (paper.cfg_scale, paper.temperature) == (1.5, 1.0)


def test_missing_run_config_is_a_clear_error(tmp_path):
    args = generate.parse_args(["--checkpoint", str(tmp_path), "--out", "o", "--prompt", "a"])
    with pytest.raises(FileNotFoundError, match="not a training run"):
        sample_flags.fill_sampling_args(args, str(tmp_path))
