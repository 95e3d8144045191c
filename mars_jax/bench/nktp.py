"""Benchmark: parallel decoding of high-res codes with next-K heads vs next-token decoding.

    python -m mars_jax.bench.nktp [--k=4] [--train_steps=300] [--batch=1] [--repeats=10]
    python -m mars_jax.bench.nktp --checkpoint=runs/demo_stage3   # the trained stage-3 demo

The model is `ModelConfig.demo(nktp_k=K)` at the demo's stage-III sizes (32 → 64 px at f8:
low-res 4×4 codes, high-res 8×8). Its weights are random, then briefly trained (all K heads)
on synthetic flat two-code scenes (`synthetic_sr`), so that drafts can agree with head 1 as
they do on a trained model; the printed code accuracy and codes per pass show how far. All three decoders run in this process
on the same prompts, compiled before timing:

- K = 1 (plain next-token greedy, KV cache, one token per pass) — the reference;
- fast mode, K codes per pass;
- exact mode (greedy self-speculative verification), whose codes are checked equal to K = 1.

With `--checkpoint`, the model is that stage-III run (no training here) and the prompts are
held-out demo scenes: their captions and the VQ codes of their low-res images, as
`evaluate --bench=sr` makes them; code accuracy is then against the scenes' own high-res
codes. Decoding runs in `decoder.decode_dtype` (float32 on CPU; `--dtype` to force).

Prints forward passes and wall-clock time of each, `nktp_forward_passes_ratio=` (fast, K / 1)
and last `nktp_speedup=` (fast mode, wall-clock K = 1 / K).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mars_jax import runs
from mars_jax.eval import sr
from mars_jax.model import decoder, heads, loss, params
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import nktp as nktp_sampling
from mars_jax.sampling.options import SamplingConfig
from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.tokens import code_order, formats, vocab
from mars_jax.tokens import layout as layout_lib
from mars_jax.vq import images as vq_images

LO_GRID, HI_GRID = (4, 4), (8, 8)
CODEBOOK = 64  # codes used by the synthetic task
TEXT_LEN = 8


def synthetic_sr(rng: np.random.Generator, n: int):
    """Low-res codes `[n, 4, 4]` and high-res codes `[n, 8, 8]` of flat two-code scenes: a
    background code with one rectangle of a foreground code (like the demo's shapes on a
    plain background); the high-res scene is the low-res one at twice the resolution."""
    codes = np.stack([rng.choice(CODEBOOK, 2, replace=False) for _ in range(n)])
    lo = np.empty((n, *LO_GRID), np.int64)
    for i in range(n):
        y0, y1 = np.sort(rng.choice(LO_GRID[0] + 1, 2, replace=False))
        x0, x1 = np.sort(rng.choice(LO_GRID[1] + 1, 2, replace=False))
        lo[i] = codes[i, 0]
        lo[i, y0:y1, x0:x1] = codes[i, 1]
    return lo, lo.repeat(2, axis=1).repeat(2, axis=2)


def train_briefly(cfg, frozen, trainable, steps, batch_size, seed, lr=3e-3):
    """Adam on all trainable params with the next-K loss; returns trainable and last loss."""
    tx = optax.adam(lr)
    opt_state = tx.init(trainable)
    rng = np.random.default_rng(seed)
    example = formats.sr_batch([np.zeros(0, np.int64)], *synthetic_sr(rng, 1), TEXT_LEN)
    layout = example["layout"]

    @jax.jit  # the frozen params are an argument: captured, they would be compiled in
    def step(frozen, trainable, opt_state, batch):
        def objective(tr):
            sum_loss, sum_weight, metrics = loss.sr_loss(frozen, tr, batch, layout, cfg)
            return sum_loss / jnp.maximum(sum_weight, 1.0), metrics

        (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, metrics

    metrics = {}
    for _ in range(steps):
        lo, hi = synthetic_sr(rng, batch_size)
        hi = code_order.to_sequence_order(hi, cfg.nktp_k)
        order = code_order.hires_order(HI_GRID, cfg.nktp_k)
        empty = [np.zeros(0, np.int64)] * batch_size
        b = formats.sr_batch(empty, list(lo), list(hi), TEXT_LEN, hi_order=order)
        b.pop("layout")
        trainable, opt_state, metrics = step(frozen, trainable, opt_state, b)
    return trainable, {k: float(v) for k, v in metrics.items()}


MODELS = {"demo": ModelConfig.demo, "tiny": ModelConfig.tiny}


def _trained_synthetic(args):
    """`ModelConfig.demo` (or `.tiny`) with K heads, briefly trained on `synthetic_sr` scenes."""
    # Image logits over the vision head only, as the demo preset has them.
    cfg = MODELS[args.model](nktp_k=args.k, image_logits="vision_only")
    key = jax.random.key(args.seed)
    p_all = jax.jit(params.init_params, static_argnums=0)(cfg, key)
    frozen = p_all["frozen"]
    trainable = heads.extend_trainable(cfg, p_all["trainable"], jax.random.fold_in(key, 1))
    start = time.perf_counter()
    trainable, metrics = train_briefly(
        cfg, frozen, trainable, args.train_steps, args.train_batch, args.seed
    )
    print(
        f"trained {args.train_steps} steps in {time.perf_counter() - start:.1f}s: "
        + ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items()))
    )
    return cfg, frozen, trainable


def _from_checkpoint(workdir: str, batch: int):
    """A stage-III run and `batch` held-out demo scenes: captions, low-res codes, truth."""
    run = runs.load_run(workdir)
    sizes = run.sr_sizes
    if not sizes:
        raise ValueError(f"--checkpoint={workdir}: not a stage-III run (no low-res sizes)")
    lo_hw, hi_hw = sizes[0]
    images, captions, _ = sr.demo_ground_truth(batch)
    f = run.vq_cfg.downsample_factor
    hi_grid = (hi_hw[0] // f, hi_hw[1] // f)
    tok = load_tokenizer()
    texts = [tok.encode(formats.resolution_prompt(hi_hw[1], hi_hw[0], c)) for c in captions]
    lo = vq_images.encode_uint8(run.vq_params, run.vq_cfg, sr.downsample(images, lo_hw))
    hi_true = sr._vq_encode(run.vq_params, run.vq_cfg, images)
    return (
        run.model_cfg, run.frozen, run.trainable, texts, lo, hi_true, hi_grid, run.text_len,
        run.vq_cfg.codebook_size,
    )  # fmt: skip


def time_decode(run, repeats: int) -> tuple[float, float, object]:
    """Best wall-clock and process CPU seconds over `repeats` runs (after a compiling run).

    The minimum is the least disturbed by other processes on a shared machine.
    """
    run()  # compile
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), out


def pass_costs(cfg, weights, rows: dict, codebook: int, k: int, text_len: int, repeats: int):
    """Where a decode's time goes: the prompt's prefill (one mixed pass vs text and vision
    parts, `decode_codes(text_len=...)`) in ms, and µs per pass of T = 1 and T = k vision
    tokens with the heads read at the last one, timed in a loop of passes as the decoders
    run them (per pass: the loop's time less the prefill's, over its passes). Prints
    `pass_cost_*` lines; returns them as a dict."""
    tokens, positions, valid = (jnp.asarray(rows[key]) for key in ("tokens", "positions", "valid"))
    r, length = tokens.shape

    def decode_like(split: bool, width: int = 1, num_heads: int = 1, count: int = 0):
        """Prefill, then `count` passes of `width` tokens: the shape of `decode_codes`."""

        @jax.jit
        def run(weights):
            cache = decoder.init_cache(cfg, r, length + 64 + width, weights.compute_dtype)
            cut = text_len if split else 0
            h, cache = decoder.prefill(weights, cache, tokens, positions, valid, cfg, cut)

            def body(carry, i):
                cache, code = carry
                fed = vocab.code_to_token(jnp.broadcast_to(code, (r, width)))
                at = length + i * width + jnp.arange(width)[None]
                h, cache = decoder.extend(
                    weights, cache, fed, jnp.broadcast_to(at, (r, width)),
                    jnp.ones((r, width), bool), length + i * width, cfg, layout_lib.VISION,
                )  # fmt: skip
                logits = decoder.head_code_logits(weights, h[:, -1], num_heads, cfg)
                return (cache, jnp.argmax(logits[:, 0], -1)[:, None].astype(jnp.int32)), None

            start = (cache, jnp.zeros((r, 1), jnp.int32))
            return jax.lax.scan(body, start, jnp.arange(count))[0][1], h

        seconds, _, _ = time_decode(lambda: jax.block_until_ready(run(weights)), repeats)
        return seconds

    out = {}
    for name, split in (("mixed", False), ("split", True)):
        out[f"pass_cost_prefill_ms[{name}]"] = decode_like(split) * 1e3
    prefill_s = out["pass_cost_prefill_ms[split]"] / 1e3
    count = 64 // k
    for width, num_heads in ((1, 1), (k, 1), (k, k)):
        seconds = decode_like(True, width, num_heads, count) - prefill_s
        out[f"pass_cost_us[T={width},heads={num_heads}]"] = seconds / count * 1e6
    for name, value in out.items():
        print(f"{name}={value:.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=4)
    p.add_argument(
        "--model", choices=sorted(MODELS), default="demo",
        help="model sizes (tiny: a quick check of the code paths, not the benchmark)",
    )  # fmt: skip
    p.add_argument("--train_steps", type=int, default=300)
    p.add_argument("--train_batch", type=int, default=8)
    p.add_argument("--batch", type=int, default=1, help="prompts decoded together")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="", help="a stage-III run to time (default: built)")
    p.add_argument("--dtype", default="", help="decode compute dtype (default: decode_dtype)")
    p.add_argument(
        "--pass_costs", action="store_true", help="also time the prefill and single passes"
    )
    args = p.parse_args(argv)

    if args.checkpoint:
        cfg, frozen, trainable, texts, lo, hi_true, hi_grid, text_len, codebook = _from_checkpoint(
            args.checkpoint, args.batch
        )
    else:
        cfg, frozen, trainable = _trained_synthetic(args)
        rng = np.random.default_rng(args.seed + 1)
        lo, hi_true = synthetic_sr(rng, args.batch)
        texts = [[] for _ in range(args.batch)]
        hi_grid, text_len, codebook = HI_GRID, TEXT_LEN, CODEBOOK
    dtype = args.dtype or decoder.decode_dtype(cfg)
    print(
        f"decoding {args.batch} prompt(s) of {hi_grid[0]}x{hi_grid[1]} codes on "
        f"{jax.default_backend()} in {dtype} (model compute dtype {cfg.compute_dtype})"
    )
    scfg = SamplingConfig(cfg_scale=1.0, temperature=0.0, codebook_size=codebook)
    # The decode's copy of the weights (cast, per layer), made once as a sampler would for
    # many prompts; all three decoders use it, so none pays for it in its timings.
    weights = decoder.prepare(frozen, trainable, cfg, codebook, dtype)

    def decode_fn(k, mode):
        return lambda: nktp_sampling.sample_hires_codes(
            weights, None, cfg, texts, lo, hi_grid, k, mode, text_len=text_len, scfg=scfg,
            compute_dtype=dtype,
        )  # fmt: skip

    results = {}
    for name, k, mode in (("ntp", 1, "fast"), ("fast", args.k, "fast"), ("exact", args.k, "exact")):
        seconds, cpu_seconds, (codes, info) = time_decode(decode_fn(k, mode), args.repeats)
        results[name] = (seconds, codes, info, cpu_seconds)
        accuracy = float(np.mean(codes == hi_true))
        print(
            f"{name}: k={k} passes={info.passes} codes={info.codes} "
            f"codes_per_pass={info.codes / info.passes:.2f} time={seconds * 1e3:.1f}ms "
            f"cpu_time={cpu_seconds * 1e3:.1f}ms code_accuracy={accuracy:.3f} "
            f"distinct_codes={len(np.unique(codes))}"
        )
    base_s, base_codes, base_info, base_cpu = results["ntp"]
    if not np.array_equal(results["exact"][1], base_codes):
        print("exact mode codes differ from next-token greedy decoding", file=sys.stderr)
        return 1
    for name in ("exact", "fast"):
        seconds, codes, info, cpu_seconds = results[name]
        print(f"nktp_cpu_time_ratio_{name}={base_cpu / cpu_seconds:.2f}")
        print(f"nktp_forward_passes_ratio_{name}={info.passes / base_info.passes:.3f}")
        print(f"nktp_speedup_{name}={base_s / seconds:.2f}")
    if args.pass_costs:
        rows = formats.sr_prompt(texts, lo, text_len, hi_grid)
        pass_costs(cfg.replace(compute_dtype=dtype), weights, rows, codebook, args.k, text_len,
                   args.repeats)  # fmt: skip
    fast_s, _, fast_info, _ = results["fast"]
    print(f"nktp_forward_passes_ratio={fast_info.passes / base_info.passes:.3f}")
    print(f"nktp_speedup={base_s / fast_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
