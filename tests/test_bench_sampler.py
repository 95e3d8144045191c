"""`python -m mars_jax.bench.sampler`: its figure line, and a mistake answered in one line."""

import subprocess
import sys

import pytest

from mars_jax.bench import sampler


def test_prints_images_per_second(capsys):
    assert sampler.main(["--preset=tiny", "--batch=2", "--grid=2", "--repeats=1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    name, value = last.split("=")
    assert name == "t2i_images_per_s" and float(value) > 0


@pytest.mark.parametrize("flag", ["--batch=0", "--grid=0", "--repeats=-1"])
def test_bad_flag_is_one_line(flag):
    out = subprocess.run(
        [sys.executable, "-m", "mars_jax.bench.sampler", flag], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: --") and len(out.stderr.strip().splitlines()) == 1
