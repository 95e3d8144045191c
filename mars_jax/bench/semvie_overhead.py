"""SemVIE train-step cost relative to a dense, fully trainable decoder of the same shape.

    python -m mars_jax.bench.semvie_overhead [--width=512] [--layers=4] [--text=64]
        [--image=256] [--batch=4] [--reps=10] [--image_logits=vision_only]

MARS step: loss of the text-to-image layout (text slot, image slot), gradient w.r.t. the
trainable subtree only; the text stream touches no trainable weight and has no backward.
Dense step: the same decoder with one expert for every token and every weight it uses
trainable (the whole sequence as one vision segment): the gradient is taken w.r.t. exactly
what a dense model trains, the layers' attention, O-projection, FFN and norms, the final
norm, the (vision) embedding and the head(s) the loss uses (`dense_trained`), not w.r.t. the
frozen text expert, the 151,936-row text embedding or, under `vision_only`, the text head,
which the dense step never reads (their zero gradients would be filled every step). Both use the
same loss (on the image slot) and heads; `--image_logits=vision_only` (default) keeps the
vision-head softmax on image targets, so the figure measures the layers, not the 151,936-way
text head. Steps are timed alternately in one process; the ratio of medians is printed.
Last line: ``semvie_overhead=<MARS/dense>``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import loss, params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import layout as layout_lib
from mars_jax.tokens import vocab


def _batch(batch: int, text: int, image: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tokens = np.concatenate(
        [
            rng.integers(0, vocab.ENDOFTEXT, (batch, text)),
            vocab.code_to_token(rng.integers(0, vocab.NUM_IMAGE_CODES, (batch, image))),
        ],
        1,
    )
    loss_mask = np.zeros(tokens.shape, np.float32)
    loss_mask[:, text:-1] = 1.0
    return {
        "tokens": tokens.astype(np.int32),
        "positions": np.broadcast_to(np.arange(text + image, dtype=np.int32), tokens.shape),
        "valid": np.ones(tokens.shape, bool),
        "targets": np.roll(tokens, -1, axis=1).astype(np.int32),
        "loss_mask": loss_mask,
    }


def dense_trained(frozen: dict, cfg: ModelConfig) -> dict:
    """The frozen weights a dense model of this shape trains (and the dense step reads)."""
    used = {
        "layers": {k: frozen["layers"][k] for k in ("ln1", "ln2", "o")},
        "final_norm": frozen["final_norm"],
    }
    if cfg.image_logits == "full":  # the joint softmax reads the text head too
        used["text_head"] = frozen["text_head"]
    return used


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(
        prog="python -m mars_jax.bench.semvie_overhead", description=__doc__
    )
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--text", type=int, default=64)
    p.add_argument("--image", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--image_logits", default="vision_only", choices=("full", "vision_only"))
    a = p.parse_args(argv)

    cfg = ModelConfig(
        num_layers=a.layers,
        width=a.width,
        num_heads=a.width // 64,
        num_kv_heads=a.width // 64,
        head_dim=64,
        mlp_dim=int(a.width * 2.6875),
        image_logits=a.image_logits,
        loss_chunk_size=1024,
    )
    state = jax.jit(params.init_params, static_argnums=0)(cfg, jax.random.key(0))
    batch = jax.tree.map(jnp.asarray, _batch(a.batch, a.text, a.image))
    t2i = layout_lib.make_layout(("text", a.text), ("vision", a.image))
    dense = layout_lib.make_layout(("vision", a.text + a.image))

    @jax.jit
    def mars_step(frozen, trainable, batch):
        f = lambda tr: loss.task_loss(frozen, tr, batch, t2i, cfg)[0]
        return jax.value_and_grad(f)(trainable)

    @jax.jit
    def dense_step(frozen, trainable, batch):
        def f(used, tr):
            fr = {**frozen, **used, "layers": {**frozen["layers"], **used["layers"]}}
            return loss.task_loss(fr, tr, batch, dense, cfg)[0]

        return jax.value_and_grad(f, argnums=(0, 1))(dense_trained(frozen, cfg), trainable)

    steps = {"mars": mars_step, "dense": dense_step}
    t0 = time.perf_counter()
    for step in steps.values():
        jax.block_until_ready(step(state["frozen"], state["trainable"], batch))
    print(f"compiled both steps in {time.perf_counter() - t0:.1f}s; {cfg}")
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(a.reps):
        for name, step in steps.items():
            t = time.perf_counter()
            jax.block_until_ready(step(state["frozen"], state["trainable"], batch))
            times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k}: median {v * 1e3:.1f} ms over {a.reps} steps (batch {a.batch})")
    ratio = med["mars"] / med["dense"]
    print(f"semvie_overhead={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
