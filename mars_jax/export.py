"""Export a trained run as a self-contained inference bundle.

    python -m mars_jax.export --checkpoint=<run | run/checkpoints/N> [--step=N] --out=<dir>

The bundle holds everything sampling needs and nothing of training: the weights of the
chosen step with the frozen LLM merged in (`params/`, Orbax; the base's hash is recorded
and checked on load), the run's resolved config (`config.json`), the VQ tokenizer (`vq/`),
the image grids and stage-III sizes it was trained on, its sampling defaults
(`bundle.json`), and a `model_card.md` with the run's settings and last metrics. Every
sampling command takes the bundle as `--checkpoint`, from any directory, on a machine
without the training data or the base checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import orbax.checkpoint as ocp

from mars_jax import cli, runs, sample_flags
from mars_jax.train_lib import base as base_lib
from mars_jax.train_lib import metrics as metrics_lib
from mars_jax.train_lib import workdir as workdir_lib
from mars_jax.vq.checkpoint import save_vq


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = cli.parser("export", __doc__)
    p.add_argument("--checkpoint", required=True, help="a training run, or one of its steps")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--out", required=True, help="bundle directory (must not exist, or be empty)")
    p.add_argument("--vq", default=None, help="VQ tokenizer dir (default: the run's)")
    sample_flags.add_weights_arg(p)
    return p.parse_args(argv)


def _last_metrics(root: str) -> dict:
    path = workdir_lib.resolve(root) / metrics_lib.METRICS_FILE
    if not path.exists():
        return {}
    return metrics_lib.last_record(path.read_text().splitlines())


WEIGHTS_WORDS = {
    "ema": "the moving average of its weights (optim.ema_decay)",
    "trained": "the optimizer's weights",
}


def model_card(run: runs.LoadedRun, info: dict, metrics: dict) -> str:
    """A README for the bundle: what it is, how to sample, the run's settings."""
    cfg = run.model_cfg
    grids = ", ".join(f"{h}x{w}" for h, w in info["grids"]) or "-"
    shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    lines = [
        "# MARS model bundle",
        "",
        f"Exported from `{run.source}` at step {run.step} (stage {run.stage}), "
        f"{WEIGHTS_WORDS[run.weights]}.",
        "",
        "## Use",
        "",
        "```",
        f"python -m mars_jax.generate --checkpoint={os.path.basename(info['out'])} "
        '--prompt="a red circle on the left" --out=samples/',
        "```",
        "",
        "## Model",
        "",
        f"- layers {cfg.num_layers}, width {cfg.width}, heads {cfg.num_heads} "
        f"(kv {cfg.num_kv_heads}), MLP {cfg.mlp_dim} (vision {cfg.vision_ffn_dim}), "
        f"next-K heads {cfg.nktp_k}",
        f"- frozen base: `{info['base']['source']}` (hash `{info['base']['hash'][:16]}…`)",
        f"- text slot {info['text_len']} tokens; code grids {grids}; VQ codebook "
        f"{run.vq_cfg.codebook_size}, factor {run.vq_cfg.downsample_factor}",
        f"- sampling defaults: {json.dumps(info['sample'])}",
        "",
        "## Last training metrics",
        "",
        *(f"- {k}: {v:.6g}" for k, v in sorted(shown.items())),
        "",
    ]
    return "\n".join(lines)


def export(
    checkpoint: str,
    out: str,
    step: int | None = None,
    vq_dir: str | None = None,
    weights: str | None = None,
) -> str:
    """Write the bundle; returns its directory. ``weights``: as `runs.load_run`'s (default:
    the run's moving average when it kept one)."""
    run = runs.load_run(checkpoint, step, vq_dir, weights)
    os.makedirs(out, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        weights = {"frozen": run.frozen, "trainable": run.trainable}
        ckptr.save(os.path.abspath(os.path.join(out, "params")), weights)
    save_vq(os.path.join(out, "vq"), run.vq_cfg, run.vq_params)
    source = run.config.base.checkpoint or f"random:{run.config.base.seed}"
    info = {
        "format": runs.BUNDLE_FORMAT,
        "step": run.step,
        "stage": run.stage,
        "source_run": run.source,
        "weights": run.weights,
        "base": base_lib.identity(source, run.frozen),
        "text_len": run.text_len,
        "grids": [list(g) for g in run.grids],
        "sr_sizes": [[list(lo), list(hi)] for lo, hi in run.sr_sizes],
        "sample": run.sample,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(run.config.to_dict(), f, indent=2)
    with open(os.path.join(out, "model_card.md"), "w", encoding="utf-8") as f:
        f.write(model_card(run, {**info, "out": out}, _last_metrics(run.source)))
    with open(os.path.join(out, runs.BUNDLE_FILE), "w") as f:  # last: marks it complete
        json.dump(info, f, indent=2)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with cli.one_line_errors():
        runs.locate(args.checkpoint, args.step)
        runs.check_weights(args.checkpoint, args.weights)
        if os.path.exists(args.out) and os.listdir(args.out):
            raise cli.UsageError(f"--out={args.out}: exists and is not empty")
        out = export(args.checkpoint, args.out, args.step, args.vq, args.weights)
    print(f"wrote bundle {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
