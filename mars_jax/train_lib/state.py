"""Train state: the trainable subtree, its optimizer state and step counters.

The state is a plain dict pytree (what Orbax saves and what the jitted step donates):

    {"step": int32[], "skipped": int32[],
     "trainable": {...fp32...}, "opt_state": optax state over trainable leaves only}

It holds no RNG: nothing in the step is random (caption choice and dropout are drawn by the
data pipeline, seeded per element, and resume with the iterator's checkpoint). Checkpoints
of earlier versions, which stored an unused `rng`, still restore (`checkpoint.restore`).

The frozen LLM is never part of it: it is an argument of the step, kept in bf16, not
differentiated, not donated and not checkpointed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mars_jax.train_lib import schedule
from mars_jax.train_lib.sharding import replicated

NO_DECAY_DEFAULT = ("bias", "ln", "norm")
# The trainable subtree of the LLM layer copies (`model.unfreeze`), whose learning rate
# `optim.unfrozen_lr_scale` scales: copies of pretrained weights, next to fresh ones.
UNFROZEN_KEY = "unfrozen_layers"


def decay_mask(trainable: Any, no_decay: tuple[str, ...] = NO_DECAY_DEFAULT) -> Any:
    """True for leaves that get weight decay: all except biases and norm scales (by path)."""

    def keep(path, _):
        text = jax.tree_util.keystr(path).lower()
        return not any(word in text for word in no_decay)

    return jax.tree_util.tree_map_with_path(keep, trainable)


def make_optimizer(optim: Any, num_steps: int) -> tuple[optax.GradientTransformation, Any]:
    """AdamW with warm-up + cosine and global-norm clipping, from the ``optim`` config section."""
    lr = schedule.warmup_cosine(optim.peak_lr, num_steps, optim.warmup_ratio, optim.end_lr_ratio)
    no_decay = tuple(optim.no_decay)
    parts = []
    if optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    parts.append(
        optax.adamw(
            lr,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=lambda tree: decay_mask(tree, no_decay),
        )
    )
    scale = float(optim.get("unfrozen_lr_scale", 1.0))
    if scale != 1.0:
        parts.append(scale_subtree(UNFROZEN_KEY, scale))
    return optax.chain(*parts), lr


def scale_subtree(key: str, factor: float) -> optax.GradientTransformation:
    """Multiply the updates of the trainable subtree ``key`` by ``factor`` (after AdamW: its
    learning rate and weight decay both scale). Stateless, so checkpoints keep their shape."""

    def scale(updates, state, params=None):
        del params
        if isinstance(updates, dict) and key in updates:
            scaled = jax.tree.map(lambda u: u * factor, updates[key])
            updates = {**updates, key: scaled}
        return updates, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), scale)


def _init_state(trainable: Any, tx: optax.GradientTransformation) -> dict:
    trainable = jax.tree.map(lambda x: x.astype(jnp.float32), trainable)
    return {
        "step": jnp.zeros((), jnp.int32),
        "skipped": jnp.zeros((), jnp.int32),
        "trainable": trainable,
        "opt_state": tx.init(trainable),
    }


def abstract_state(abstract_trainable: Any, tx: optax.GradientTransformation) -> dict:
    return jax.eval_shape(lambda t: _init_state(t, tx), abstract_trainable)


def state_shardings(
    abstract: dict, trainable_shardings: Any, tx: optax.GradientTransformation, mesh: Mesh
) -> dict:
    """Shardings of the whole state: optimizer moments follow their parameter, rest replicated."""
    rep = replicated(mesh)
    opt = optax.tree_map_params(
        tx,
        lambda _, s: s,
        abstract["opt_state"],
        trainable_shardings,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, jax.sharding.Sharding),
    )
    return {
        "step": rep,
        "skipped": rep,
        "trainable": trainable_shardings,
        "opt_state": opt,
    }


def jit_init_state(tx: optax.GradientTransformation, shardings: dict):
    """``trainable -> state`` under jit, explicit ``out_shardings`` (incl. ``tx.init``)."""
    return jax.jit(
        lambda t: _init_state(t, tx),
        in_shardings=(shardings["trainable"],),
        out_shardings=shardings,
    )
