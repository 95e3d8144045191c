"""An exponential moving average (EMA) of the trainable weights, the weights runs sample with.

Averaging the last few hundred updates removes the noise the final steps leave in the
weights, and image generators commonly sample from such an average (`optim.ema_decay`,
0 = off). On the CPU demo it narrowed the spread between training seeds without raising
their mean; the stage-I demo preset samples from it (decay 0.99, docs/RESULTS.md).

The average lives in the train state as ``state["ema"]`` (same tree, dtype and shardings as
``state["trainable"]``), is checkpointed with it, and is what sampling, evaluation and
export load when a run kept one (`runs.load_run`).

Early in training the decay is warmed up, ``min(decay, (1 + n) / (10 + n))`` after ``n``
applied updates (as TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so a
short run's average is not held back by its initial weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

# The state key of the average; a checkpoint that holds it is sampled from it.
EMA_KEY = "ema"


def decay_of(optim: Mapping) -> float:
    """`optim.ema_decay` of a config's ``optim`` section (a ConfigDict or a saved run's dict);
    0 (or absent, in runs saved before it): no average."""
    return float(optim.get("ema_decay", 0.0) or 0.0)


def decay_at(decay: float, updates: jax.Array) -> jax.Array:
    """The decay applied after ``updates`` earlier updates (warmed up, then ``decay``)."""
    n = jnp.asarray(updates, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))


def update(ema: Any, trainable: Any, decay: float, updates: jax.Array) -> Any:
    """``ema * d + trainable * (1 - d)`` leaf by leaf, ``d = decay_at(decay, updates)``;
    ``trainable`` are the weights after the update, ``updates`` the count before it."""
    d = decay_at(decay, updates)
    return jax.tree.map(
        lambda e, t: (e * d + t.astype(e.dtype) * (1 - d)).astype(e.dtype), ema, trainable
    )
