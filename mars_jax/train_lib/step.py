"""The jitted train step: grad of the trainable subtree only, accumulation, non-finite guard.

``make_train_step`` returns a pure function ``(state, frozen, batch) -> (state, metrics)``.
Layouts and the model config are closed over (static); ``compile_train_step`` wraps it in
``jax.jit`` with explicit in/out shardings and the state donated.

Gradient accumulation splits the global batch into ``grad_accum`` micro-batches and runs them
under ``lax.scan`` and combines them by tokens (``loss_and_grads``): the result is the
token mean over the whole batch. Micro-batch ``a`` takes rows ``a, a + A, a + 2A, ...`` so every device
keeps its own rows (no resharding): ``[B, ...] -> [B/A, A, ...] -> [A, B/A, ...]``.

Non-finite loss or gradient norm: the update is dropped (trainable params and optimizer state
stay as they were), ``step`` still advances and ``skipped`` counts it; the host decides
whether to stop (``train.nonfinite``). The weights' moving average (``state["ema"]``, when
the state has one) follows the applied updates only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mars_jax.train_lib import ema as ema_lib
from mars_jax.train_lib.sharding import BATCH_AXES, batch_sharding

LossFn = Callable[[Any, Any, Mapping[str, Any], Mapping[str, Any]], tuple[jax.Array, dict]]


def split_micro(batch: dict, grad_accum: int, mesh: Mesh | None) -> dict:
    def split(x):
        b = x.shape[0]
        y = x.reshape(b // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1)
        if mesh is not None:
            spec = PartitionSpec(None, BATCH_AXES, *([None] * (x.ndim - 1)))
            y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))
        return y

    return jax.tree.map(split, batch)


def _weight(metrics: Mapping[str, jax.Array], key: str) -> jax.Array:
    """The token count a mean metric is taken over: `<task>/tokens` for `<task>/...`; for
    the loss its weighted count `loss_weight` (per-task weights, `loss.total_loss`); else
    `tokens` (1 when the loss function reports none)."""
    task = key.rpartition("/")[0]
    own = f"{task}/tokens" if task else "loss_weight" if key == "loss" else None
    for name in (own, "tokens"):
        if name in metrics:
            return jax.lax.stop_gradient(metrics[name]).astype(jnp.float32)
    return jnp.ones((), jnp.float32)


def _is_count(key: str) -> bool:
    """Metrics that are counts (summed over micro-batches), not means."""
    return key.endswith("tokens") or key == "loss_weight"


def loss_and_grads(
    loss_fn: LossFn, trainable, frozen, batch: dict, grad_accum: int = 1, mesh: Mesh | None = None
) -> tuple[jax.Array, dict, Any]:
    """``(loss, metrics, grads)`` of the whole batch, in ``grad_accum`` micro-batches.

    Micro-batches are combined by tokens, not averaged: each contributes its summed token
    loss (its mean loss times its ``metrics["tokens"]``) and gradient, and the sums are
    divided once by the batch's total tokens. So a micro-batch of short captions weighs
    what its tokens weigh, and the result equals one pass over the whole batch. Metrics
    named ``*tokens`` (and ``loss_weight``) are summed; other metrics are means weighted by
    their task's tokens.
    """

    def grads_of(mb, by_tokens: bool):
        def f(t):
            loss, metrics = loss_fn(frozen, t, mb)
            return loss * _weight(metrics, "loss") if by_tokens else loss, (loss, metrics)

        (_, (loss, metrics)), grads = jax.value_and_grad(f, has_aux=True)(trainable)
        return loss, metrics, grads

    if grad_accum == 1:
        return grads_of(batch, by_tokens=False)
    micro = split_micro(batch, grad_accum, mesh)

    def sums_of(mb):
        loss, metrics, grads = grads_of(mb, by_tokens=True)
        metrics = {**metrics, "loss": loss}
        weights = {k: _weight(metrics, k) for k in metrics if not _is_count(k)}
        weighted = {k: v * weights[k] if k in weights else v for k, v in metrics.items()}
        return weighted, weights, grads

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(sums_of, first)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

    def body(acc, mb):
        return jax.tree.map(lambda a, o: a + o.astype(jnp.float32), acc, sums_of(mb)), None

    (weighted, weights, grads), _ = jax.lax.scan(body, zeros, micro)
    per_token = lambda x, w: x / jnp.maximum(w, 1e-9)
    metrics = {k: per_token(v, weights[k]) if k in weights else v for k, v in weighted.items()}
    grads = jax.tree.map(lambda g: per_token(g, weights["loss"]), grads)
    return metrics["loss"], metrics, grads


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    grad_accum: int = 1,
    mesh: Mesh | None = None,
    augment: Callable[[dict, jax.Array], dict] | None = None,
    ema_decay: float = 0.0,
) -> Callable[[dict, Any, dict], tuple[dict, dict]]:
    """Build ``train_step(state, frozen, batch_arrays) -> (state, metrics)``.

    ``loss_fn(frozen, trainable, batch_arrays) -> (loss, metrics)`` is the model's total loss
    with layouts and config bound; ``metrics`` are scalars, combined over micro-batches by
    their tokens (``loss_and_grads``). ``augment(batch_arrays, step)``, if given, changes
    the batch first (``augment.corrupt_batch``: image-code noise). ``ema_decay``: the decay
    of the moving average a state with ``"ema"`` keeps (``ema.update``).
    """

    def train_step(state: dict, frozen: Any, batch: dict) -> tuple[dict, dict]:
        trainable = state["trainable"]
        if augment is not None:
            batch = augment(batch, state["step"])
        loss, metrics, grads = loss_and_grads(loss_fn, trainable, frozen, batch, grad_accum, mesh)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trainable)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        updates, new_opt = tx.update(grads, state["opt_state"], trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = {
            "step": state["step"] + 1,
            "skipped": state["skipped"] + (~finite).astype(jnp.int32),
            "trainable": keep(new_trainable, trainable),
            "opt_state": keep(new_opt, state["opt_state"]),
        }
        if ema_lib.EMA_KEY in state:
            old = state[ema_lib.EMA_KEY]
            applied = state["step"] - state["skipped"]  # updates before this one
            new_ema = ema_lib.update(old, new_trainable, ema_decay, applied)
            new_state[ema_lib.EMA_KEY] = keep(new_ema, old)
        out = {
            "state_finite": tree_is_finite(finite_parts(new_state)),
            "loss": loss,
            "grad_norm": grad_norm,
            # optax counts applied updates only: skipped steps do not advance the schedule.
            "lr": lr_schedule(state["step"] - state["skipped"]),
            "finite": finite,
            **{k: v for k, v in metrics.items() if k != "loss"},
        }
        return new_state, out

    return train_step


def compile_train_step(
    train_step: Callable,
    mesh: Mesh,
    state_shardings: dict,
    frozen_shardings: Any,
) -> Callable:
    """``jax.jit`` with explicit shardings; the state (argument 0) is donated."""
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, frozen_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )


def finite_parts(state: dict) -> tuple:
    """The parts of a train state that must stay finite: the trainable params, the optimizer
    state and the moving average when kept (checked after each step and on restore)."""
    return state["trainable"], state["opt_state"], state.get(ema_lib.EMA_KEY, {})


def tree_is_finite(tree: Any) -> jax.Array:
    """True when every float leaf of ``tree`` is finite (checked before a checkpoint is written)."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
