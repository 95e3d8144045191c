"""`python -m mars_jax.bench.nktp`: prints its figures (a short run, not the benchmark)."""

import contextlib
import io
import types

import jax.numpy as jnp
import numpy as np

from mars_jax.bench import nktp as bench
from mars_jax.model import decoder
from mars_jax.sampling import nktp as nktp_sampling
from mars_jax.sampling.options import SamplingConfig
from mars_jax.tokens import formats

# `_trained_synthetic`'s arguments: the tiny model, untrained.
UNTRAINED_TINY = types.SimpleNamespace(k=4, seed=0, train_steps=0, train_batch=1, model="tiny")


def test_bench_prints_passes_ratio_then_speedup_last():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert (
            bench.main(["--model=tiny", "--train_steps=2", "--train_batch=2", "--repeats=1"]) == 0
        )
    lines = out.getvalue().strip().splitlines()
    assert "in float32 (model compute dtype bfloat16)" in lines[1]  # CPU: nktp decode_dtype
    assert lines[-2].startswith("nktp_forward_passes_ratio=0.250")  # 16 passes for 64 codes
    assert lines[-1].startswith("nktp_speedup=")
    assert any(x.startswith("nktp_speedup_exact=") for x in lines)


def test_prepared_weights_decode_the_same_codes():
    cfg, frozen, trainable = bench._trained_synthetic(UNTRAINED_TINY)
    lo, _ = bench.synthetic_sr(np.random.default_rng(0), 2)
    scfg = SamplingConfig(cfg_scale=1.0, temperature=0.0, codebook_size=64)
    args = ([[], []], lo, bench.HI_GRID, 4, "exact")
    plain, _ = nktp_sampling.sample_hires_codes(
        frozen, trainable, cfg, *args, text_len=bench.TEXT_LEN, scfg=scfg
    )
    weights = decoder.prepare(frozen, trainable, cfg, 64)
    prepared, info = nktp_sampling.sample_hires_codes(
        weights, None, cfg, *args, text_len=bench.TEXT_LEN, scfg=scfg
    )
    assert (plain == prepared).all() and info.dtype == "float32"


def test_split_prefill_equals_mixed_and_pass_costs_print():
    cfg, frozen, trainable = bench._trained_synthetic(UNTRAINED_TINY)
    cfg = cfg.replace(compute_dtype="float32")
    lo, _ = bench.synthetic_sr(np.random.default_rng(0), 2)
    rows = formats.sr_prompt([[5, 6], []], lo, bench.TEXT_LEN, bench.HI_GRID)
    weights = decoder.prepare(frozen, trainable, cfg, 64, "float32")
    args = [jnp.asarray(rows[k]) for k in ("tokens", "positions", "valid")]
    out = {}
    for text_len in (0, bench.TEXT_LEN):
        cache = decoder.init_cache(cfg, 2, args[0].shape[1] + 4, "float32")
        out[text_len] = decoder.prefill(weights, cache, *args, cfg, text_len)
    h_mixed, cache_mixed = out[0]
    h_split, cache_split = out[bench.TEXT_LEN]
    np.testing.assert_allclose(h_split[:, -1], h_mixed[:, -1], rtol=1e-5, atol=1e-5)
    valid = np.asarray(rows["valid"])  # pad slots hold whatever; compare the valid ones
    kv_split = decoder.cache_keys_values(cache_split)
    kv_mixed = decoder.cache_keys_values(cache_mixed)
    for got, want in zip(kv_split, kv_mixed, strict=True):
        got, want = np.asarray(got), np.asarray(want)
        np.testing.assert_allclose(
            got[:, :, : valid.shape[1]][:, valid], want[:, :, : valid.shape[1]][:, valid],
            rtol=1e-5, atol=1e-5,
        )  # fmt: skip

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        costs = bench.pass_costs(cfg, weights, rows, 64, 4, bench.TEXT_LEN, repeats=1)
    assert set(costs) == {
        "pass_cost_prefill_ms[mixed]",
        "pass_cost_prefill_ms[split]",
        "pass_cost_us[T=1,heads=1]",
        "pass_cost_us[T=4,heads=1]",
        "pass_cost_us[T=4,heads=4]",
    }
    assert all(np.isfinite(v) for v in costs.values())  # differences of timings: any sign
    assert printed.getvalue().count("pass_cost_") == 5
