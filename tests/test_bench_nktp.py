"""`python -m mars_jax.bench.nktp`: prints its figures (a short run, not the benchmark)."""

import contextlib
import io

import numpy as np

from mars_jax import nktp_sampling
from mars_jax.bench import nktp as bench


def test_bench_prints_passes_ratio_then_speedup_last():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bench.main(["--train_steps=2", "--train_batch=2", "--repeats=1"]) == 0
    lines = out.getvalue().strip().splitlines()
    assert "in float32 (model compute dtype bfloat16)" in lines[1]  # CPU: nktp decode_dtype
    assert lines[-2].startswith("nktp_forward_passes_ratio=0.250")  # 16 passes for 64 codes
    assert lines[-1].startswith("nktp_speedup=")
    assert any(x.startswith("nktp_speedup_exact=") for x in lines)


def test_prepared_weights_decode_the_same_codes():
    cfg, frozen, trainable = bench._trained_synthetic(
        type("A", (), {"k": 4, "seed": 0, "train_steps": 0, "train_batch": 1})()
    )
    lo, _ = bench.synthetic_sr(np.random.default_rng(0), 2)
    scfg = nktp_sampling.SamplingConfig(cfg_scale=1.0, temperature=0.0, codebook_size=64)
    args = ([[], []], lo, bench.HI_GRID, 4, "exact")
    plain, _ = nktp_sampling.sample_hires_codes(
        frozen, trainable, cfg, *args, text_len=bench.TEXT_LEN, scfg=scfg
    )
    weights = nktp_sampling.prepare_params(frozen, trainable, cfg, 64)
    prepared, info = nktp_sampling.sample_hires_codes(
        weights, None, cfg, *args, text_len=bench.TEXT_LEN, scfg=scfg
    )
    assert (plain == prepared).all() and info.dtype == "float32"
