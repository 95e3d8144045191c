"""Does the model read its condition? The loss with each row's condition taken from another row.

A text-to-image model that ignores its prompt predicts the image codes as well under any
caption, and a captioner that ignores its image writes the same captions under any image;
the training loss cannot tell either apart from one that reads. Every ``train.reading_every``
steps the loop scores the batch it is about to train on twice as the step does: as it is,
and with each row's conditioning segment (a t2i row's caption, a caption row's image) taken
from the row before it. ``<task>/reading_gap`` = mismatched minus true loss, in nats per
token, is what the condition is worth to the model (0: ignored). Both losses use the same
parameters, the ones before the step's update.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mars_jax.tokens import formats
from mars_jax.train_lib import step as step_lib

# Tasks whose first layout segment conditions the rest: t2i (text ▸ image) and caption
# (image ▸ text). The sr task's condition (caption and low-res codes) is two segments long.
CONDITIONED_TASKS = (formats.T2I, formats.CAPTION)


def mismatched_rows(arrays: Mapping[str, np.ndarray], layout: Any) -> dict[str, np.ndarray]:
    """``arrays`` (``[B, L]`` numpy, one task) with each row's first segment — its condition —
    taken from the row before it (row 0 from the last). The positions after that segment
    move by the change in its valid-token count (left-padded captions of other lengths), so
    every row stays a well-formed sequence of its layout."""
    n = int(layout[0][1])
    rows = np.asarray(arrays["tokens"]).shape[0]
    if rows < 2:
        raise ValueError(f"mismatching conditions needs at least 2 rows, got {rows}")
    previous = np.roll(np.arange(rows), 1)
    out = {k: np.array(v, copy=True) for k, v in arrays.items()}
    for key in ("tokens", "positions", "valid"):
        out[key][:, :n] = np.asarray(arrays[key])[previous, :n]
    # A position's target is the next token: the segment's last target is this row's own.
    for key in ("targets", "loss_mask"):
        out[key][:, : n - 1] = np.asarray(arrays[key])[previous, : n - 1]
    valid = np.asarray(arrays["valid"])
    shift = valid[previous, :n].sum(axis=1) - valid[:, :n].sum(axis=1)
    tail = np.asarray(arrays["positions"])[:, n:] + shift[:, None]
    out["positions"][:, n:] = np.where(valid[:, n:], tail, 0).astype(out["positions"].dtype)
    return out


def probed_tasks(local_batch: Mapping[str, Mapping[str, np.ndarray]]) -> list[str]:
    """The batch's tasks the probe scores: conditioned ones with at least 2 rows here."""
    return [
        t
        for t in CONDITIONED_TASKS
        if t in local_batch and np.asarray(local_batch[t]["tokens"]).shape[0] >= 2
    ]


def make_mismatched_loss(
    loss_fn: Callable[[Any, Any, Mapping[str, Any]], tuple[jax.Array, dict]],
    tasks: tuple[str, ...],
    grad_accum: int = 1,
    mesh: Mesh | None = None,
) -> Callable[[Any, Any, dict], dict[str, jax.Array]]:
    """``f(frozen, trainable, batch) -> {"<task>/loss_mismatched": mean token loss}`` for
    ``tasks``, over ``grad_accum`` micro-batches as the step splits them (the probe needs no
    more memory than a step's forward pass). ``loss_fn`` is the step's loss function."""

    def per_task_sums(frozen, trainable, batch):
        _, metrics = loss_fn(frozen, trainable, batch)
        return {
            t: (metrics[f"{t}/loss"] * metrics[f"{t}/tokens"], metrics[f"{t}/tokens"])
            for t in tasks
        }

    def mismatched_loss(frozen, trainable, batch):
        if grad_accum == 1:
            sums = per_task_sums(frozen, trainable, batch)
        else:
            micro = step_lib.split_micro(batch, grad_accum, mesh)
            parts = jax.lax.map(lambda mb: per_task_sums(frozen, trainable, mb), micro)
            sums = jax.tree.map(lambda x: jnp.sum(x, axis=0), parts)
        return {f"{t}/loss_mismatched": s / jnp.maximum(n, 1.0) for t, (s, n) in sums.items()}

    return mismatched_loss


def gaps(mismatched: Mapping[str, float], step_metrics: Mapping[str, float]) -> dict[str, float]:
    """``<task>/reading_gap`` = mismatched minus true loss (the step's ``<task>/loss``)."""
    out = {}
    for key, value in mismatched.items():
        task = key.split("/")[0]
        if f"{task}/loss" in step_metrics:
            out[f"{task}/reading_gap"] = float(value) - float(step_metrics[f"{task}/loss"])
    return out
