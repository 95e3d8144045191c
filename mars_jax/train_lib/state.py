"""Train state: the trainable subtree, its optimizer state and step counters.

The state is a plain dict pytree (what Orbax saves and what the jitted step donates):

    {"step": int32[], "skipped": int32[],
     "trainable": {...fp32...}, "opt_state": optax state over trainable leaves only,
     "ema": {...fp32...}  (only with `optim.ema_decay` > 0: the weights' moving average, ema.py)}

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

from mars_jax.train_lib import ema as ema_lib
from mars_jax.train_lib import schedule
from mars_jax.train_lib.sharding import replicated
from mars_jax.train_lib.validate import MUON_GROUPS, OPTIMIZERS

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


# Muon's matrix axes of each layer weight, `(reduction axes, output axes)` after the
# leading `[num_layers]` axis (a batch axis: every layer is orthogonalised on its own).
MUON_AXES = {
    "q": ((1,), (2, 3)),
    "k": ((1,), (2, 3)),
    "v": ((1,), (2, 3)),
    "o": ((1, 2), (3,)),
    "gate": ((1,), (2,)),
    "up": ((1,), (2,)),
    "down": ((1,), (2,)),
}


def muon_dimensions(trainable: Any, groups: tuple[str, ...] = MUON_GROUPS) -> Any:
    """Per leaf: Muon's axes for the layer matrices (`MUON_AXES`) of the trainable subtrees
    `groups` (the vision expert's `layers`, the LLM copies' `unfrozen_layers`), None (AdamW)
    for the rest: embeddings, heads, biases and norm scales, as in the Muon papers."""
    from optax.contrib import MuonDimensionNumbers

    def dims(path, _):
        keys = [getattr(k, "key", None) for k in path]
        name = keys[-1]
        if name in MUON_AXES and keys[0] in groups:
            reduction, output = MUON_AXES[name]
            return MuonDimensionNumbers(reduction_axis=reduction, output_axis=output)
        return None

    return jax.tree_util.tree_map_with_path(dims, trainable)


def make_optimizer(optim: Any, num_steps: int) -> tuple[optax.GradientTransformation, Any]:
    """The ``optim`` config section's optimizer with warm-up + cosine and global-norm clipping.

    ``optim.name``: "adamw", or "muon" (the layer matrices by orthogonalised momentum, the
    rest by AdamW; updates scaled to AdamW's RMS, so one ``peak_lr`` serves both).
    """
    lr = schedule.warmup_cosine(optim.peak_lr, num_steps, optim.warmup_ratio, optim.end_lr_ratio)
    no_decay = tuple(optim.no_decay)
    mask = lambda tree: decay_mask(tree, no_decay)
    name = optim.get("name", "adamw")
    parts = []
    if optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    if name == "adamw":
        parts.append(
            optax.adamw(
                lr,
                b1=optim.b1,
                b2=optim.b2,
                eps=optim.eps,
                weight_decay=optim.weight_decay,
                mask=mask,
            )
        )
    elif name == "muon":
        from optax.contrib import muon

        groups = tuple(optim.get("muon_groups", MUON_GROUPS))
        dimensions = lambda tree: muon_dimensions(tree, groups)

        # optax's Muon decays all of its AdamW leaves alike; norm scales and biases must
        # not decay, so its AdamW runs without decay and the masked decay is added here.
        adam_decay = lambda tree: jax.tree.map(
            lambda decays, dims: decays and dims is None,
            mask(tree),
            dimensions(tree),
            is_leaf=lambda x: x is None,
        )
        parts += [
            muon(
                lr,
                beta=0.95,  # Muon's momentum (its papers' value)
                ns_steps=int(optim.get("muon_ns_steps", 5)),
                eps=optim.eps,
                weight_decay=optim.weight_decay,
                weight_decay_mask=mask,
                adam_b1=optim.b1,
                adam_b2=optim.b2,
                adam_weight_decay=0.0,
                muon_weight_dimension_numbers=dimensions,
                consistent_rms=0.2,
            ),
            add_decay(lr, optim.weight_decay, adam_decay),
        ]
    else:
        raise ValueError(f"optim.name: {name!r}, expected one of {OPTIMIZERS}")
    scale = float(optim.get("unfrozen_lr_scale", 1.0))
    if scale != 1.0:
        parts.append(scale_subtree(UNFROZEN_KEY, scale))
    return optax.chain(*parts), lr


def add_decay(lr: optax.Schedule, weight_decay: float, mask: Any) -> optax.GradientTransformation:
    """Decoupled weight decay after the updates are final: `u - lr(step) * decay * param` on
    the leaves `mask(params)` marks (AdamW's decay, added after another optimizer)."""

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        step_lr = lr(state.count)
        decay = lambda u, p, m: u - step_lr * weight_decay * p if m else u
        updates = jax.tree.map(decay, updates, params, mask(params))
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


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


def _init_state(trainable: Any, tx: optax.GradientTransformation, ema: bool = False) -> dict:
    trainable = jax.tree.map(lambda x: x.astype(jnp.float32), trainable)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "skipped": jnp.zeros((), jnp.int32),
        "trainable": trainable,
        "opt_state": tx.init(trainable),
    }
    if ema:  # the average starts at the initial weights
        state[ema_lib.EMA_KEY] = jax.tree.map(jnp.copy, trainable)
    return state


def abstract_state(
    abstract_trainable: Any, tx: optax.GradientTransformation, ema: bool = False
) -> dict:
    """The state's shapes and dtypes; ``ema``: with the weights' moving average."""
    return jax.eval_shape(lambda t: _init_state(t, tx, ema), abstract_trainable)


def state_shardings(
    abstract: dict, trainable_shardings: Any, tx: optax.GradientTransformation, mesh: Mesh
) -> dict:
    """Shardings of the whole state: optimizer moments follow their parameter, rest replicated.

    A moment is found by its path, which ends with its parameter's path, and its shape. This
    holds for any optax state, also those `optax.tree_map_params` cannot walk (Muon's
    partitioned, masked states)."""
    del tx  # the state's structure says it all
    rep = replicated(mesh)
    params = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract["trainable"])[0]:
        params[jax.tree_util.keystr(path)] = leaf.shape
    shardings = dict(
        (jax.tree_util.keystr(path), s)
        for path, s in jax.tree_util.tree_flatten_with_path(
            trainable_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
        )[0]
    )

    def follow(path, leaf):
        text = jax.tree_util.keystr(path)
        owners = [p for p in params if text.endswith(p) and params[p] == leaf.shape]
        return shardings[max(owners, key=len)] if owners else rep

    out = {
        "step": rep,
        "skipped": rep,
        "trainable": trainable_shardings,
        "opt_state": jax.tree_util.tree_map_with_path(follow, abstract["opt_state"]),
    }
    if ema_lib.EMA_KEY in abstract:
        out[ema_lib.EMA_KEY] = trainable_shardings
    return out


def jit_init_state(tx: optax.GradientTransformation, shardings: dict):
    """``trainable -> state`` under jit, explicit ``out_shardings`` (incl. ``tx.init``); with
    the moving average when ``shardings`` has one."""
    ema = ema_lib.EMA_KEY in shardings
    return jax.jit(
        lambda t: _init_state(t, tx, ema),
        in_shardings=(shardings["trainable"],),
        out_shardings=shardings,
    )
