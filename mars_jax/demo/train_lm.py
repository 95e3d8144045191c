"""Pretrain the demo LLM on bilingual text alone and write the shipped asset.

    python -m mars_jax.demo.train_lm --out=mars_jax/assets/demo_lm

This reproduces ``mars_jax/assets/demo_lm``: the demo model's LLM (``ModelConfig.demo``, the
Qwen layout at width 256, 4 layers) trained as a plain causal language model on
``mars_jax.demo.lm_corpus`` (English and Chinese sentences about colored shapes, tokenized
with the real Qwen tokenizer). Only the ids the corpus uses get their own embedding row and
head column; every other id shares one trained head column, and the softmax runs over all
151,936 text ids (``n_other`` copies of that column enter the log-sum-exp), so the expanded
model (``lm_asset.expand``) predicts exactly what was trained. The demo presets then keep
this LLM frozen (the MARS recipe) and initialise the vision expert from it.

Rows are packed: sentences joined by ``<|endoftext|>``, every row starting with a sentence at
position 0 as captions do in MARS's formats. The last line printed is
``demo_lm_loss=<held-out loss in nats per token>``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from safetensors.numpy import save_file
from tqdm import tqdm

from mars_jax import cli
from mars_jax.demo import lm_asset, lm_corpus, shapes
from mars_jax.model import heads, mars
from mars_jax.model import params as params_lib
from mars_jax.model.config import ModelConfig
from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.tokens import vocab

EOT = vocab.ENDOFTEXT


def lm_config() -> ModelConfig:
    """The demo model's LLM as stored (its frozen shapes are the demo presets')."""
    return ModelConfig.demo()


def encode_corpus(num_sentences: int, seed: int) -> list[list[int]]:
    tok = load_tokenizer()
    return [tok.encode(lm_corpus.sentence(i, seed)) for i in range(num_sentences)]


def demo_prompt_ids() -> set[int]:
    """Ids of every held-out prompt and a sample of training captions (must be covered)."""
    tok = load_tokenizer()
    texts = [p["caption"] for p in shapes.eval_prompts(num_scenes=200, seed=0)]
    texts += [shapes.example(i)[1] for i in range(2000)]
    return {i for t in texts for i in tok.encode(t)}


def pack_rows(
    sentences: list[list[int]], seq_len: int, rng: np.random.Generator, eot: int
) -> np.ndarray:
    """``[N, seq_len + 1]`` rows of ``s <eot> s <eot> …``, each starting with a sentence."""
    order = rng.permutation(len(sentences))
    rows, row = [], []
    for i in order:
        ids = sentences[i] + [eot]
        if len(row) + len(ids) > seq_len + 1 and row:
            rows.append((row + [eot] * (seq_len + 1))[: seq_len + 1])
            row = []
        row += ids
    return np.asarray(rows, np.int32)


def init_compact(cfg: ModelConfig, token_ids: np.ndarray, init_seed: int) -> dict:
    """Trainable compact params, cut from the random init the asset's other rows keep."""
    full = params_lib.init_frozen(cfg.replace(frozen_dtype="float32"), jax.random.key(init_seed))
    other = heads.shared_column_id(token_ids)  # the column the trainer's check expects
    return {
        "embed_rows": full["embed"][token_ids],
        "head_columns": full["text_head"][:, token_ids],
        "other_column": full["text_head"][:, other],
        "layers": full["layers"],
        "final_norm": full["final_norm"],
    }


def lm_loss(p: dict, rows_BxL1: jax.Array, n_other: int, cfg: ModelConfig) -> jax.Array:
    """Mean next-token loss over the full 151,936-id text softmax (compact ids in ``rows``)."""
    tokens, targets = rows_BxL1[:, :-1], rows_BxL1[:, 1:]
    b, seq = tokens.shape
    frozen = {"embed": p["embed_rows"], "layers": p["layers"], "final_norm": p["final_norm"]}
    unused = jax.lax.stop_gradient(p["layers"])  # the scan's vision slot; text-only rows
    trainable = {"layers": {"vision_attn": unused["text_attn"], "vision_mlp": unused["text_mlp"]}}
    positions = jnp.broadcast_to(jnp.arange(seq), (b, seq))
    valid = jnp.ones((b, seq), bool)
    h = mars.forward_hidden(frozen, trainable, tokens, positions, valid, (("text", seq),), cfg)
    used = h @ p["head_columns"]
    other = h @ p["other_column"] + math.log(n_other)
    lse = jnp.logaddexp(jax.nn.logsumexp(used, axis=-1), other)
    picked = jnp.take_along_axis(used, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(lse - picked)


def to_asset_tensors(p: dict, token_ids: np.ndarray) -> dict[str, np.ndarray]:
    bf16 = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16))
    tensors = {k: bf16(p[k]) for k in ("embed_rows", "head_columns", "other_column", "final_norm")}
    tensors.update({k: bf16(v) for k, v in lm_asset.flatten_layers(p["layers"]).items()})
    tensors["token_ids"] = np.asarray(token_ids, np.int32)
    return tensors


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("demo.train_lm", __doc__)
    p.add_argument("--out", required=True, help="output directory of the asset")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--weight_decay",
        type=float,
        default=0.1,
        help="AdamW decay, as LLMs are pretrained: it keeps the weights near the init scale",
    )
    p.add_argument("--num_sentences", type=int, default=60_000)
    p.add_argument("--seed", type=int, default=0, help="corpus and data order")
    p.add_argument("--init_seed", type=int, default=0, help="random init of all rows")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    for flag in ("steps", "batch_size", "seq_len", "num_sentences"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1")

    cfg = lm_config()
    train_cfg = cfg.replace(compute_dtype="float32", attention="reference", remat_policy="none")
    print(f"encoding {args.num_sentences} sentences", flush=True)
    sentences = encode_corpus(args.num_sentences, args.seed)
    token_ids = np.asarray(sorted({EOT} | {i for s in sentences for i in s}), np.int32)
    missing = demo_prompt_ids() - set(token_ids.tolist())
    if missing:
        cli.fail(f"the corpus lacks {len(missing)} ids the demo's captions use: {sorted(missing)}")
    compact = {int(t): i for i, t in enumerate(token_ids)}
    to_compact = lambda s: [compact[t] for t in s]
    held_out = [to_compact(s) for s in sentences[: args.num_sentences // 20]]
    train = [to_compact(s) for s in sentences[args.num_sentences // 20 :]]
    n_other = vocab.TEXT_VOCAB_SIZE - len(token_ids)

    params = init_compact(train_cfg, token_ids, args.init_seed)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, max(1, args.steps // 20), args.steps, end_value=args.lr * 0.05
    )
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=args.weight_decay)
    )
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, rows):
        loss, grads = jax.value_and_grad(lm_loss)(params, rows, n_other, train_cfg)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    eval_loss = jax.jit(lambda params, rows: lm_loss(params, rows, n_other, train_cfg))
    rng = np.random.default_rng(args.seed)
    eval_rows = jnp.asarray(pack_rows(held_out, args.seq_len, rng, compact[EOT])[:256])
    os.makedirs(args.out, exist_ok=True)
    log = [{"step": 0, "held_out_loss": float(eval_loss(params, eval_rows))}]
    rows, cursor, t0 = pack_rows(train, args.seq_len, rng, compact[EOT]), 0, time.time()
    bar = tqdm(range(args.steps), desc="demo LLM", disable=args.no_progress)
    for i in bar:
        if cursor + args.batch_size > len(rows):
            rows, cursor = pack_rows(train, args.seq_len, rng, compact[EOT]), 0
        params, opt_state, loss = step(
            params, opt_state, jnp.asarray(rows[cursor : cursor + args.batch_size])
        )
        cursor += args.batch_size
        if (i + 1) % 100 == 0 or i + 1 == args.steps:
            entry = {
                "step": i + 1,
                "loss": float(loss),
                "held_out_loss": float(eval_loss(params, eval_rows)),
            }
            log.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", held_out=f"{entry['held_out_loss']:.3f}")

    save_file(to_asset_tensors(params, token_ids), os.path.join(args.out, lm_asset.PARAMS_FILE))
    with open(os.path.join(args.out, lm_asset.CONFIG_FILE), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    info = {
        "init_seed": args.init_seed,
        "corpus_seed": args.seed,
        "num_sentences": args.num_sentences,
        "num_token_ids": len(token_ids),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "held_out_loss": log[-1]["held_out_loss"],
        "train_seconds": round(time.time() - t0, 1),
    }
    with open(os.path.join(args.out, lm_asset.INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    with open(os.path.join(args.out, "train_log.jsonl"), "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in log)
    print(f"demo_lm_loss={log[-1]['held_out_loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
