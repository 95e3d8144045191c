"""Every command answers `--help`, and answers a mistake in one line (`error: ...`, exit
status 2, no traceback) before it loads a model or writes a file.

The commands run in-process (their `main(argv)`, as the console scripts call it); the
trainer, whose flags absl parses at start-up, and one sampling command also run as
`python -m` processes."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from mars_jax.demo import shards as demo_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = [
    "generate",
    "caption",
    "cascade",
    "export",
    "convert",
    "data.verify",
    "data.prepare",
    "evaluate",
    "vq.train",
    "plot",
    "train",
]


def _run(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    env.pop("MARS_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def _main(command: str, argv: list[str]) -> int:
    """Run a command's `main(argv)` in-process; its exit status."""
    module = importlib.import_module(f"mars_jax.{command}")
    try:
        return int(module.main(argv) or 0)
    except SystemExit as e:
        return int(e.code or 0)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "train"])
def test_help(command, capsys):
    assert _main(command, ["--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m mars_jax.{command}")


def test_help_as_processes(tmp_path):
    for command in ("train", "generate"):
        result = _run([f"mars_jax.{command}", "--help"], str(tmp_path))
        assert result.returncode == 0, result.stderr[-1000:]
        assert f"python -m mars_jax.{command}" in result.stdout


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A run directory with its config and run_info but no checkpoint: enough for every
    check that comes before loading weights."""
    root = tmp_path_factory.mktemp("fake_run")
    (root / "config.json").write_text(json.dumps({"stage": 2, "sample": {}}))
    info = {"stage": 2, "grids": [[8, 8]], "sr_sizes": [], "vq_dir": demo_shards.demo_vq_dir()}
    (root / "run_info.json").write_text(json.dumps(info))
    return str(root)


MISTAKES = [
    (["generate"], "required"),
    (["generate", "--checkpoint=/nope", "--out=OUT", "--prompt=a"], "--checkpoint=/nope: no such"),
    (["generate", "--checkpoint=RUN", "--out=OUT"], "no prompt"),
    (
        ["generate", "--checkpoint=RUN", "--out=OUT", "--prompt=a", "--resolution=abc"],
        "WIDTHxHEIGHT",
    ),
    (
        ["generate", "--checkpoint=RUN", "--out=OUT", "--prompt=a", "--resolution=640x640"],
        "not one the model trained on",
    ),
    (
        ["generate", "--checkpoint=RUN", "--out=OUT", "--prompt=a", "--temperature=-1"],
        "temperature",
    ),
    (
        ["generate", "--checkpoint=RUN", "--out=OUT", "--prompt=a", "--candidates=4"],
        "trained no caption task",
    ),
    (["generate", "--checkpoint=RUN", "--out=OUT", "--prompt=a", "--candidates=0"], "candidates"),
    (["generate", "--checkpoint=RUN", "--out=OUT", "--prompt=a", "--bogus"], "unrecognized"),
    (
        ["generate", "--checkpoint=RUN", "--out=OUT", "--prompt=a", "--sr-from=x.png"],
        "not a stage-III model",
    ),
    (["generate", "--checkpoint=TMP", "--out=OUT", "--prompt=a"], "not a training run"),
    (["caption", "--checkpoint=RUN", "--image=/nope.png"], "--image=/nope.png: no such"),
    (
        ["caption", "--checkpoint=RUN", "--image=/nope.png", "--candidates=4"],
        "trained no caption task",
    ),
    (
        ["evaluate", "--bench=captions", "--checkpoint=RUN", "--candidates=4"],
        "trained no caption task",
    ),
    (
        ["evaluate", "--bench=captions", "--checkpoint=RUN", "--cfg_scale=3"],
        "--cfg_scale: options of drawing images",
    ),
    (["evaluate", "--bench=captions", "--checkpoint=RUN", "--temperature=-1"], "temperature"),
    (["cascade", "--base=RUN", "--sr=/nope", "--prompt=a", "--out=OUT"], "--sr=/nope: no such"),
    (["cascade", "--base=RUN", "--sr=RUN", "--prompt=a", "--out=OUT"], "--sr=RUN: not a stage-III"),
    (["export", "--checkpoint=/nope", "--out=OUT"], "--checkpoint=/nope: no such"),
    (["convert", "--hf=/nope", "--out=OUT"], "--hf=/nope: no such directory"),
    (["data.verify", "/nope"], "/nope: no such directory"),
    (["data.prepare", "--stage=1", "--source=/nope.jsonl", "--out=OUT", "--vq=VQ"], "/nope.jsonl"),
    (["data.prepare", "--stage=1", "--source=/nope.jsonl", "--out=OUT", "--vq=RUN"], "VQ config"),
    (["data.prepare", "--stage=4", "--source=x", "--out=OUT", "--vq=VQ"], "invalid choice"),
    (["evaluate", "--bench=shapes"], "needs --checkpoint"),
    (["evaluate", "--bench=shapes", "--checkpoint=/nope"], "--checkpoint=/nope: no such"),
    (
        ["evaluate", "--bench=shapes", "--checkpoint=RUN", "--candidates=8"],
        "trained no caption task",
    ),
    (["evaluate", "--bench=shapes", "--checkpoint=RUN", "--top-p=0"], "top_p"),
    (["generate", "--checkpoint=RUN", "--out=OUT", "--prompt=a", "--judge=clip"], "judge"),
    (["evaluate", "--bench=shapes", "--checkpoint=RUN", "--check_candidates"], "--candidates=1"),
    (["evaluate", "--bench=nope"], "invalid choice"),
    (["generate", "--checkpoint=RUN", "--out=OUT", "--prompt=a", "--weights=ema"], "no moving"),
    (["caption", "--checkpoint=RUN", "--image=IMG", "--weights=ema"], "no moving average"),
    (["evaluate", "--bench=shapes", "--checkpoint=RUN", "--weights=ema"], "no moving average"),
    (["generate", "--checkpoint=RUN", "--out=OUT", "--prompt=a", "--weights=best"], "invalid"),
    (["vq.train", "--images=/nope", "--out=OUT", "--steps=1"], "--images=/nope: no such"),
    (["plot", "--run=/nope", "--out=OUT.png"], "/nope/metrics.jsonl not found"),
]


def _an_image(tmp_path) -> str:
    path = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(path)
    return str(path)


@pytest.mark.parametrize("args, message", MISTAKES, ids=[" ".join(a[:3]) for a, _ in MISTAKES])
def test_a_mistake_is_one_line(args, message, fake_run, tmp_path, capsys):
    fill = {
        "RUN": fake_run, "OUT": str(tmp_path / "out"), "TMP": str(tmp_path),
        "VQ": demo_shards.demo_vq_dir(), "IMG": _an_image(tmp_path),
    }  # fmt: skip
    argv = [f"mars_jax.{args[0]}"]
    for arg in args[1:]:
        for key, value in fill.items():
            arg = arg.replace(f"={key}", f"={value}")
        argv.append(arg)
    message = message.replace("RUN", fake_run)
    command = argv[0].removeprefix("mars_jax.")
    status = _main(command, argv[1:])  # an unexpected exception fails the test here
    err = capsys.readouterr().err
    assert status == 2, err[-1500:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-1500:]
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_mistake_is_one_line_as_a_process(fake_run, tmp_path):
    argv = ["mars_jax.generate", f"--checkpoint={fake_run}", f"--out={tmp_path / 'out'}"]
    result = _run(argv, str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: no prompt: pass --prompt=... or --prompt-file=..."
