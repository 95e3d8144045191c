"""Learning-rate schedule and step counts (paper §4.1: linear warm-up of 1 %, then cosine)."""

from __future__ import annotations

import math

import optax


def total_steps(num_steps: int, epochs: float, num_examples: int | None, global_batch: int) -> int:
    """Steps to train: ``num_steps`` when positive, else ``epochs`` passes over the data."""
    if num_steps > 0:
        return int(num_steps)
    if not num_examples:
        raise ValueError(
            "train.num_steps <= 0 asks for epochs, but the data set size is unknown: "
            "set train.num_steps or data.num_examples"
        )
    return max(1, math.ceil(epochs * num_examples / global_batch))


def warmup_cosine(
    peak_lr: float, num_steps: int, warmup_ratio: float, end_lr_ratio: float = 0.0
) -> optax.Schedule:
    """0 → ``peak_lr`` linearly over ``warmup_ratio`` of the steps, then cosine to the end value."""
    warmup = max(1, round(warmup_ratio * num_steps)) if warmup_ratio > 0 else 0
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak_lr,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=peak_lr * end_lr_ratio,
    )
