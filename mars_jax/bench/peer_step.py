"""The MARS train step against a Hugging Face peer on the same work, on CPU.

    python -m mars_jax.bench.peer_step [--batch=8] [--text=64] [--image=256] [--reps=5]

MARS: value and gradient of `loss.task_loss` (text-to-image layout, `image_logits=
vision_only`) w.r.t. the trainable subtree (vision experts, vision embedding and head), the
text stream frozen (forward only), fp32, no remat. Peer: `transformers.Qwen2ForCausalLM`
(`attn_implementation="sdpa"`) of the same shape with an 8,200-id vocabulary (the vision
head's), the same tokens, the loss on the image positions, `loss.backward()` over all its
weights; fp32, `torch.set_num_threads(--threads)`. Neither applies an optimizer update. Both
are timed alternately in one process (median of `--reps`). Width 512, 8 heads, 4 layers,
FFN 1,408. Needs torch and transformers (the test extras); without them prints one error line.
Last line: ``peer_step_ratio=<MARS/torch>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import loss, params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import layout as layout_lib
from mars_jax.tokens import vocab


def main(argv: list[str] | None = None) -> float | None:
    p = argparse.ArgumentParser(prog="python -m mars_jax.bench.peer_step", description=__doc__)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text", type=int, default=64)
    p.add_argument("--image", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--ffn", type=int, default=1408)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--attention", default="auto", choices=("auto", "reference", "blockwise"))
    a = p.parse_args(argv)
    try:
        import torch  # optional: the test extras
        import transformers
    except ImportError as e:
        print(f"peer_step: needs torch and transformers (pip install -e '.[test]'): {e}")
        return None
    torch.set_num_threads(a.threads)
    cfg = ModelConfig(
        num_layers=a.layers,
        width=a.width,
        num_heads=a.heads,
        num_kv_heads=a.heads,
        head_dim=a.width // a.heads,
        mlp_dim=a.ffn,
        compute_dtype="float32",
        frozen_dtype="float32",
        image_logits="vision_only",
        loss_chunk_size=4096,
        attention=a.attention,
    )
    rng = np.random.default_rng(0)
    b, t, n = a.batch, a.text, a.image
    codes = rng.integers(0, vocab.NUM_IMAGE_CODES, (b, n))
    tokens = np.concatenate(
        [rng.integers(0, vocab.ENDOFTEXT, (b, t)), codes + vocab.TEXT_VOCAB_SIZE], 1
    )
    loss_mask = np.zeros(tokens.shape, np.float32)
    loss_mask[:, t:-1] = 1.0
    batch = {
        "tokens": tokens.astype(np.int32),
        "positions": np.broadcast_to(np.arange(t + n, dtype=np.int32), tokens.shape),
        "valid": np.ones(tokens.shape, bool),
        "targets": np.roll(tokens, -1, axis=1).astype(np.int32),
        "loss_mask": loss_mask,
    }
    batch = jax.tree.map(jnp.asarray, batch)
    state = jax.jit(params.init_params, static_argnums=0)(cfg, jax.random.key(0))
    t2i = layout_lib.make_layout(("text", t), ("vision", n))

    @jax.jit
    def mars_step(frozen, trainable, batch):
        f = lambda tr: loss.task_loss(frozen, tr, batch, t2i, cfg)[0] / jnp.sum(batch["loss_mask"])
        return jax.value_and_grad(f)(trainable)

    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(
            vocab_size=vocab.VISION_VOCAB_SIZE,
            hidden_size=a.width,
            intermediate_size=a.ffn,
            num_hidden_layers=a.layers,
            num_attention_heads=a.heads,
            num_key_value_heads=a.heads,
            tie_word_embeddings=False,
            attn_implementation="sdpa",
        )
    ).train()
    # Peer ids: text ids folded into the 8,200-id table (the work does not depend on them).
    peer_ids = np.where(
        tokens >= vocab.TEXT_VOCAB_SIZE, tokens - vocab.TEXT_VOCAB_SIZE, tokens % 8000
    )
    ids = torch.from_numpy(peer_ids)
    labels = ids.clone()
    labels[:, :t] = -100  # the loss on the image positions only (HF shifts labels itself)

    def torch_step():
        hf.zero_grad(set_to_none=True)
        out = hf(input_ids=ids, labels=labels)
        out.loss.backward()
        return out.loss

    t0 = time.perf_counter()
    jax.block_until_ready(mars_step(state["frozen"], state["trainable"], batch))
    torch_step()
    print(f"warm-up (incl. compile) {time.perf_counter() - t0:.1f}s; {b} x ({t} text + {n} image)")
    times: dict[str, list[float]] = {"mars": [], "torch": []}
    for _ in range(a.reps):
        t0 = time.perf_counter()
        jax.block_until_ready(mars_step(state["frozen"], state["trainable"], batch))
        times["mars"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch_step()
        times["torch"].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k}: median {v * 1e3:.1f} ms over {a.reps} steps")
    print(f"threads: torch {torch.get_num_threads()}, cpus {os.cpu_count()}")
    ratio = med["mars"] / med["torch"]
    print(f"peer_step_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main(sys.argv[1:])
