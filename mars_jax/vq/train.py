"""Train a VQ-GAN image tokenizer on one's own images.

    python -m mars_jax.vq.train --images=<folder or file.jsonl> --out=<dir> --config=demo \
        --steps=2000 [--batch_size=32 --lr=2e-4 --restart_every=200 --init=<vq dir>]

The objective is ``mars_jax.vq.losses.vq_loss`` (L1 [+ L2] reconstruction, codebook and
commitment terms, straight-through estimator). ``--adversarial_weight`` > 0 adds taming's
hinge PatchGAN loss from ``--adversarial_start`` on, with a fixed weight (taming's adaptive
weight is not implemented); a perceptual (LPIPS) loss is not implemented. Adam with taming's
betas (0.5, 0.9) for both networks. Codebook usage (fraction of codes hit in each logging window) is
logged; codes unused for ``restart_every`` steps are re-initialised from encoder outputs of the
current batch (dead-code restart), which keeps small codebooks alive. ``train_vq`` is the same
loop as a library function over an in-memory uint8 array (used by the demo). Training runs on
one device.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from mars_jax import cli
from mars_jax.vq import checkpoint, discriminator, images, losses, model
from mars_jax.vq.config import VQConfig

LOG_FILE = "train_log.jsonl"
GRID_FILE = "reconstructions.png"


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    batch_size: int = 32
    learning_rate: float = 2e-4
    b1: float = 0.5
    b2: float = 0.9
    beta: float = 0.25  # commitment weight
    l2_weight: float = 0.0
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000  # 0: only the final checkpoint
    restart_every: int = 200  # 0: no dead-code restart
    adversarial_weight: float = 0.0  # 0: no discriminator
    adversarial_start: int = 0  # first step with the adversarial term
    disc_layers: int = 3
    disc_channels: int = 64
    progress: bool = True


@dataclasses.dataclass
class TrainResult:
    params: model.Params
    history: list[dict[str, float]]
    identity: str | None  # of the final checkpoint, when one was written


# ------------------------------------------------------------------------------ jitted steps


@functools.lru_cache(maxsize=8)
def make_optimizer(learning_rate: float, b1: float, b2: float) -> optax.GradientTransformation:
    """Cached, so repeated ``train_vq`` calls pass the same static ``tx`` and reuse compilations."""
    return optax.adam(learning_rate, b1=b1, b2=b2)


_STEP_STATIC = ("cfg", "tx", "beta", "l2_weight", "disc_cfg")


@functools.partial(jax.jit, static_argnames=_STEP_STATIC, donate_argnums=(0, 1))
def train_step(
    params,
    opt_state,
    images_NxHxWx3,
    disc_params,
    adv_weight,
    *,
    cfg: VQConfig,
    tx,
    beta: float,
    l2_weight: float,
    disc_cfg: discriminator.DiscConfig | None,
):
    """One Adam step of the tokenizer.

    Returns new params and optimizer state, scalar metrics, code counts ``[K]`` and the
    reconstructions (for the discriminator step). ``adv_weight`` is traced, so switching the
    adversarial term on at ``adversarial_start`` does not recompile.
    """

    def loss_fn(p):
        loss, aux = losses.vq_loss(p, cfg, images_NxHxWx3, beta, l2_weight)
        if disc_cfg is not None:
            g_adv = -jnp.mean(discriminator.apply(disc_params, disc_cfg, aux["recon"]))
            loss = loss + adv_weight * g_adv
            aux.update(loss=loss, g_adv=g_adv)
        return loss, aux

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    counts_K = jnp.bincount(aux.pop("codes").ravel(), length=cfg.codebook_size)
    recon = aux.pop("recon")
    aux["grad_norm"] = optax.tree.norm(grads)
    return params, opt_state, aux, counts_K, recon


@functools.partial(jax.jit, static_argnames=("disc_cfg", "tx"), donate_argnums=(0, 1))
def disc_step(disc_params, disc_opt_state, real_NxHxWx3, fake_NxHxWx3, *, disc_cfg, tx):
    """One hinge-loss step of the discriminator on real images and (fixed) reconstructions."""

    def loss_fn(dp):
        logits_real = discriminator.apply(dp, disc_cfg, real_NxHxWx3)
        logits_fake = discriminator.apply(dp, disc_cfg, jax.lax.stop_gradient(fake_NxHxWx3))
        return discriminator.hinge_loss(logits_real, logits_fake)

    loss, grads = jax.value_and_grad(loss_fn)(disc_params)
    updates, disc_opt_state = tx.update(grads, disc_opt_state, disc_params)
    return optax.apply_updates(disc_params, updates), disc_opt_state, loss


@functools.partial(jax.jit, static_argnames="cfg")
def restart_dead_codes(params, cfg: VQConfig, images_NxHxWx3, counts_K, rng):
    """Codes with zero count take a random encoder output of this batch (plus a little noise)."""
    z = model.encode_latents(params, cfg, images_NxHxWx3)
    z_MxD = z.reshape(-1, z.shape[-1])
    pick_rng, noise_rng = jax.random.split(rng)
    rows = jax.random.randint(pick_rng, (cfg.codebook_size,), 0, z_MxD.shape[0])
    noise = jax.random.normal(noise_rng, (cfg.codebook_size, z_MxD.shape[1]))
    fresh_KxD = z_MxD[rows] + 0.01 * jnp.std(z_MxD) * noise
    dead_K = counts_K == 0
    codebook = params["quantize"]["embedding"]
    new_codebook = jnp.where(dead_K[:, None], fresh_KxD, codebook)
    params = {**params, "quantize": {**params["quantize"], "embedding": new_codebook}}
    return params, jnp.sum(dead_K)


@functools.partial(jax.jit, static_argnames="cfg")
def reconstruct(params, cfg: VQConfig, images_NxHxWx3):
    return model.decode(params, cfg, model.encode(params, cfg, images_NxHxWx3))


# ------------------------------------------------------------------------------ training loop


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless shuffled index batches (epochs without replacement; with it if n < batch)."""
    while True:
        if n < batch_size:
            yield rng.integers(0, n, batch_size)
            continue
        order = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            yield order[i : i + batch_size]


def _summarise(sums: dict[str, list], counts_K: np.ndarray) -> dict[str, float]:
    """Window means of each metric (over the steps that reported it) and codebook statistics."""
    out = {k: float(sum(values)) / len(values) for k, values in sums.items()}
    total = counts_K.sum()
    p = counts_K / max(total, 1)
    out["codebook_usage"] = float((counts_K > 0).mean())
    out["perplexity"] = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    return out


def train_vq(
    images_NxHxWx3_uint8: np.ndarray,
    cfg: VQConfig,
    steps: int,
    options: TrainOptions = TrainOptions(),
    out_dir: str | None = None,
    params: model.Params | None = None,
) -> TrainResult:
    """Trains (or fine-tunes ``params``) on uint8 images; checkpoints into ``out_dir`` if given."""
    data = np.asarray(images_NxHxWx3_uint8)
    if data.ndim != 4 or data.shape[-1] != cfg.in_channels or data.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 images [N, H, W, {cfg.in_channels}], got {data.shape} {data.dtype}"
        )
    if len(data) == 0:
        raise ValueError("no training images")
    f = cfg.downsample_factor
    if data.shape[1] % f or data.shape[2] % f:
        raise ValueError(f"image size {data.shape[1:3]} is not a multiple of the VQ factor {f}")

    rng = jax.random.key(options.seed)
    init_rng, rng = jax.random.split(rng)
    params = model.init(cfg, init_rng) if params is None else params
    tx = make_optimizer(options.learning_rate, options.b1, options.b2)
    opt_state = tx.init(params)
    adversarial = options.adversarial_weight > 0
    disc_cfg = disc_params = disc_opt_state = None
    if adversarial:
        disc_cfg = discriminator.DiscConfig(
            in_channels=cfg.in_channels,
            base_channels=options.disc_channels,
            num_layers=options.disc_layers,
        )
        rng, disc_rng = jax.random.split(rng)
        disc_params = discriminator.init(disc_cfg, disc_rng)
        disc_opt_state = tx.init(disc_params)
    step_fn = functools.partial(
        train_step,
        cfg=cfg,
        tx=tx,
        beta=options.beta,
        l2_weight=options.l2_weight,
        disc_cfg=disc_cfg,
    )
    np_rng = np.random.default_rng(options.seed)
    batches = _batches(len(data), options.batch_size, np_rng)

    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        log_file = open(os.path.join(out_dir, LOG_FILE), "a")
    history: list[dict[str, float]] = []
    sums: dict[str, list] = {}
    window_counts = jnp.zeros(cfg.codebook_size, jnp.int32)
    restart_counts = jnp.zeros(cfg.codebook_size, jnp.int32)
    restarted = 0
    identity = None
    bar = tqdm(range(1, steps + 1), desc="vq train", disable=not options.progress)
    try:
        for step in bar:
            batch = jnp.asarray(images.to_unit_range(data[next(batches)]))
            adv_on = adversarial and step > options.adversarial_start
            adv_weight = jnp.float32(options.adversarial_weight if adv_on else 0.0)
            params, opt_state, metrics, counts, recon = step_fn(
                params, opt_state, batch, disc_params, adv_weight
            )
            if adversarial and step > options.adversarial_start:
                disc_params, disc_opt_state, metrics["d_loss"] = disc_step(
                    disc_params, disc_opt_state, batch, recon, disc_cfg=disc_cfg, tx=tx
                )
            for k, v in metrics.items():
                sums.setdefault(k, []).append(v)
            window_counts += counts
            restart_counts += counts

            if options.restart_every and step % options.restart_every == 0 and step < steps:
                rng, restart_rng = jax.random.split(rng)
                params, n_dead = restart_dead_codes(params, cfg, batch, restart_counts, restart_rng)
                restarted += n_dead
                restart_counts = jnp.zeros_like(restart_counts)

            if step % options.log_every == 0 or step == steps:
                row = _summarise(sums, np.asarray(window_counts))
                row["step"] = step
                row["codes_restarted"] = int(restarted)
                if not math.isfinite(row["loss"]):
                    raise FloatingPointError(
                        f"VQ training diverged at step {step} (loss {row['loss']}); "
                        "no checkpoint written from this state"
                    )
                history.append(row)
                bar.set_postfix(
                    loss=f"{row['loss']:.4f}",
                    l1=f"{row['l1']:.4f}",
                    usage=f"{row['codebook_usage']:.2f}",
                )
                if out_dir:
                    log_file.write(json.dumps(row) + "\n")
                    log_file.flush()
                sums, restarted = {}, 0
                window_counts = jnp.zeros_like(window_counts)

            save_now = options.checkpoint_every and step % options.checkpoint_every == 0
            if out_dir and (save_now or step == steps):
                if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params)):
                    raise FloatingPointError(f"non-finite VQ params at step {step}; not saved")
                identity = checkpoint.save_vq(out_dir, cfg, params)
    finally:
        bar.close()
        if out_dir:
            log_file.close()

    if out_dir:
        shown = data[: min(8, len(data))]
        recon = reconstruct(params, cfg, jnp.asarray(images.to_unit_range(shown)))
        images.save_grid(os.path.join(out_dir, GRID_FILE), [shown, images.to_uint8(recon)])
    return TrainResult(params, history, identity)


# ------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("vq.train", __doc__)
    p.add_argument("--images", required=True, help="folder of images or a .jsonl with paths")
    p.add_argument("--out", required=True, help="output directory (checkpoint, log, grid)")
    p.add_argument("--preset", default="demo", choices=("demo", "paper"), help="VQConfig preset")
    p.add_argument("--config", default=None, help="a JSON file of VQConfig fields (not --preset)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--init", default=None, help="VQ checkpoint directory to fine-tune")
    d = TrainOptions()
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--beta", type=float, default=d.beta, help="commitment weight")
    p.add_argument("--l2_weight", type=float, default=d.l2_weight)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--log_every", type=int, default=d.log_every)
    p.add_argument("--checkpoint_every", type=int, default=d.checkpoint_every)
    p.add_argument("--restart_every", type=int, default=d.restart_every)
    p.add_argument("--adversarial_weight", type=float, default=d.adversarial_weight)
    p.add_argument("--adversarial_start", type=int, default=d.adversarial_start)
    p.add_argument("--disc_layers", type=int, default=d.disc_layers)
    p.add_argument("--disc_channels", type=int, default=d.disc_channels)
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    with cli.one_line_errors():
        if args.steps < 1:
            raise cli.UsageError(f"--steps={args.steps}: must be >= 1")
        if not os.path.exists(args.images):
            raise cli.UsageError(f"--images={args.images}: no such file or folder")
        if args.init:
            cfg, params = checkpoint.load_vq(args.init)
        elif args.config:
            if not os.path.isfile(args.config):
                raise cli.UsageError(f"--config={args.config}: no such file")
            with open(args.config) as f:
                cfg, params = VQConfig.from_dict(json.load(f), source=args.config), None
        else:
            cfg, params = VQConfig.preset(args.preset), None
    paths = images.list_image_files(args.images)
    data, skipped = images.load_images(paths, cfg.resolution)
    for path, reason in skipped:
        print(f"skipped unreadable image {path}: {reason}", file=sys.stderr)
    print(f"{len(data)} images loaded from {args.images}, {len(skipped)} skipped")
    if len(data) == 0:
        cli.fail(f"--images={args.images}: no readable images")
    options = TrainOptions(
        batch_size=args.batch_size,
        learning_rate=args.lr,
        beta=args.beta,
        l2_weight=args.l2_weight,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        restart_every=args.restart_every,
        adversarial_weight=args.adversarial_weight,
        adversarial_start=args.adversarial_start,
        disc_layers=args.disc_layers,
        disc_channels=args.disc_channels,
        progress=not args.no_progress,
    )
    result = train_vq(data, cfg, args.steps, options, out_dir=args.out, params=params)
    last = result.history[-1]
    print(
        f"step {last['step']}: loss {last['loss']:.4f} l1 {last['l1']:.4f} "
        f"codebook_usage {last['codebook_usage']:.3f}"
    )
    print(f"vq_identity={result.identity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
