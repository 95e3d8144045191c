"""`python -m mars_jax.plot`: curves of runs' metrics.jsonl into one PNG; mistakes in one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from mars_jax import plot


def _write_run(workdir, records):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(workdir)


def _records(offset: float):
    return [
        {"step": s, "t2i/loss": 3.0 - s / 100 + offset, "t2i/reading_gap": s / 1000}
        for s in range(10, 210, 10)
    ]


def test_smooth_is_the_trailing_mean():
    values = np.array([1.0, 2.0, 6.0, 3.0, 8.0])
    expected = [np.mean(values[max(0, i - 2) : i + 1]) for i in range(5)]
    np.testing.assert_allclose(plot.smooth(values, 3), expected)
    np.testing.assert_array_equal(plot.smooth(values, 1), values)


def test_resumed_steps_keep_their_last_record(tmp_path):
    run = _write_run(
        tmp_path / "r",
        [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "loss": 3.5}],
    )
    steps, values = plot.read_curves(run)["loss"]
    assert steps.tolist() == [1, 2] and values.tolist() == [5.0, 3.5]


def test_writes_one_png_of_labelled_runs(tmp_path, capsys):
    a = _write_run(tmp_path / "seed0", _records(0.0))
    b = _write_run(tmp_path / "seed1", _records(0.1))
    c = _write_run(tmp_path / "frozen", _records(0.5))
    out = str(tmp_path / "figs" / "curves.png")
    argv = [f"--run=demo={a}", f"--run=demo={b}", f"--run={c}", "--start=50", f"--out={out}"]
    code = plot.main(argv)
    assert code == 0
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > 600
    printed = capsys.readouterr().out
    assert "t2i/loss, t2i/reading_gap of 3 run(s)" in printed  # the defaults that were logged


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run={missing}", "--out={out}"], "metrics.jsonl not found"),
        (["--run={run}", "--metric=caption/loss", "--out={out}"], "logged by no run"),
        (["--run={run}", "--out={tmp}/curves.jpg"], "must name a .png"),
        (["--run={run}", "--smooth=0", "--out={out}"], "--smooth must be >= 1"),
        (["--run==x", "--out={out}"], "expected DIR or LABEL=DIR"),
    ],
)
def test_mistakes_are_one_line_errors(tmp_path, capsys, argv, message):
    run = _write_run(tmp_path / "run", _records(0.0))
    names = dict(run=run, missing=str(tmp_path / "nope"), out=str(tmp_path / "c.png"), tmp=tmp_path)
    with pytest.raises(SystemExit) as e:
        plot.main([a.format(**names) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not os.path.exists(tmp_path / "c.png")


def test_a_bad_line_is_named(tmp_path, capsys):
    run = _write_run(tmp_path / "run", _records(0.0))
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write("{not json\n")
    with pytest.raises(SystemExit):
        plot.main([f"--run={run}", f"--out={tmp_path / 'c.png'}"])
    assert "metrics.jsonl line 21" in capsys.readouterr().err
