"""Training curves of runs side by side: their ``metrics.jsonl`` drawn into one PNG.

    python -m mars_jax.plot --run=runs/demo_stage1 --run=frozen=runs/demo_frozen_stage1 \
        [--metric=t2i/loss --metric=t2i/reading_gap ...] [--smooth=5] --out=curves.png

``--run=[LABEL=]DIR`` names a training workdir (its label defaults to the folder name); runs
that share a label (training seeds of one configuration) share a colour. One panel per
metric; by default the task losses and the reading gaps (``train_lib/reading.py``) that any
run logged. ``--smooth=N``: moving mean over N logged points; ``--start=S``: draw from
step S on. Needs matplotlib (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

from mars_jax import cli
from mars_jax.train_lib import metrics as metrics_lib

DEFAULT_METRICS = ("t2i/loss", "caption/loss", "t2i/reading_gap", "caption/reading_gap")


def parse_run(spec: str) -> tuple[str, str]:
    """``LABEL=DIR`` or ``DIR`` → (label, dir)."""
    label, sep, path = spec.partition("=")
    if not sep:
        path, label = spec, os.path.basename(os.path.normpath(spec))
    if not label or not path:
        raise cli.UsageError(f"--run={spec!r}: expected DIR or LABEL=DIR")
    return label, path


def read_curves(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{metric: (steps, values)}`` of a run's ``metrics.jsonl`` (a step logged twice by a
    resumed run keeps its last record)."""
    path = os.path.join(workdir, metrics_lib.METRICS_FILE)
    if not os.path.isfile(path):
        raise cli.UsageError(f"--run: {path} not found (not a training workdir?)")
    by_step: dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        for number, line, record in metrics_lib.parse_records(f):
            if record is not None:
                by_step[record["step"]] = record
            elif line.strip():
                raise cli.UsageError(f"{path} line {number}: not a metrics record")
    curves: dict[str, list[tuple[int, float]]] = {}
    for step in sorted(by_step):
        for key, value in by_step[step].items():
            if key != "step" and isinstance(value, (int, float)):
                curves.setdefault(key, []).append((step, float(value)))
    return {
        k: (np.array([s for s, _ in v]), np.array([x for _, x in v])) for k, v in curves.items()
    }


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving mean over ``window`` points (the first points average what exists)."""
    if window <= 1 or len(values) == 0:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def choose_metrics(requested: Sequence[str], runs: dict[str, list[dict]]) -> list[str]:
    """The requested metrics (each must be in some run), or the defaults some run logged."""
    logged = {m for curves in runs.values() for c in curves for m in c}
    if requested:
        missing = [m for m in requested if m not in logged]
        if missing:
            raise cli.UsageError(f"--metric: {missing} logged by no run; logged: {sorted(logged)}")
        return list(requested)
    chosen = [m for m in DEFAULT_METRICS if m in logged]
    if not chosen:
        raise cli.UsageError(f"none of {list(DEFAULT_METRICS)} was logged; name --metric")
    return chosen


def draw(
    runs: dict[str, list[dict]], names: list[str], window: int, out: str, start: int = 0
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, names, strict=False):
        for i, (label, curves) in enumerate(runs.items()):
            for j, c in enumerate(curves):
                if name in c:
                    steps, values = c[name]
                    shown = steps >= start  # smoothed over all points, drawn from `start`
                    ax.plot(
                        steps[shown],
                        smooth(values, window)[shown],
                        color=colors[i % len(colors)],
                        alpha=0.85,
                        lw=1.2,
                        label=label if j == 0 else None,
                    )
        if name.endswith("reading_gap"):
            ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("plot", __doc__)
    p.add_argument("--run", action="append", required=True, help="[LABEL=]workdir, repeatable")
    p.add_argument("--metric", action="append", default=[], help="a logged metric, repeatable")
    p.add_argument("--smooth", type=int, default=5, help="moving mean over N logged points")
    p.add_argument("--start", type=int, default=0, help="draw from this step on")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.smooth < 1:
        p.error("--smooth must be >= 1")
    if not args.out.lower().endswith(".png"):
        p.error(f"--out={args.out}: must name a .png file")
    with cli.one_line_errors():
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise cli.UsageError('needs matplotlib: pip install -e ".[plot]"') from e
        runs: dict[str, list[dict]] = {}
        for spec in args.run:
            label, path = parse_run(spec)
            runs.setdefault(label, []).append(read_curves(path))
        names = choose_metrics(args.metric, runs)
        if os.path.dirname(args.out):
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
        draw(runs, names, args.smooth, args.out, args.start)
    print(f"wrote {args.out}: {', '.join(names)} of {sum(map(len, runs.values()))} run(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
