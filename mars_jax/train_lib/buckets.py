"""The image buckets a stage's data can produce, and a compile-only memory check per bucket.

Stage I: one square grid (`data.grids`). Stage II: `data/image_ops.bucket_size` cuts images
to a short side of `s` codes and a long side rounded to 4 codes (`prepare`'s default
`bucket_multiple` of 4 x the VQ factor), aspect up to `MAX_ASPECT`: `s x s`, `s x (s + 4)`,
..., `s x 2s`, landscape and portrait. Stage III: the same low-res grids, each with the
high-res grid of `image_ops.hires_size` at a long side of `s * data.hires_scale` codes (the
paper's 1,024 px for `s` = 16 codes of 16 px and a scale of 4). Grids are in codes; with
sizes in pixels divided by the VQ factor the functions of `image_ops` give the same grids.

A bucket and its transpose have the same sequence length and layout, so the check compiles
one of them.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from mars_jax.data import image_ops

MAX_ASPECT = 2.0  # `prepare --max_aspect` default (paper §3.5)
LONG_SIDE_MULTIPLE = 4  # codes: `prepare --bucket_multiple` default, 4 x the VQ factor
HEADROOM = 70 / 80  # a bucket above this share of `train.device_memory_gib` is flagged


@dataclasses.dataclass(frozen=True)
class Bucket:
    grid: tuple[int, int]  # the image's code grid (stage III: the low-res one)
    hires: tuple[int, int] | None = None  # stage III: the high-res grid

    @property
    def name(self) -> str:
        lo = f"{self.grid[0]}x{self.grid[1]}"
        return lo if self.hires is None else f"{lo}->{self.hires[0]}x{self.hires[1]}"

    @property
    def tokens(self) -> int:
        h, w = self.hires or (0, 0)
        return self.grid[0] * self.grid[1] + h * w


def stage_buckets(data: ml_collections.ConfigDict) -> list[Bucket]:
    """Every bucket `data.stage` can produce, landscape ones first, then portrait."""
    stage = int(data.stage)
    grids = [tuple(int(x) for x in g) for g in data.grids]
    if stage == 1:
        return [Bucket(g) for g in dict.fromkeys(grids)]
    short = min(min(g) for g in grids)
    m = LONG_SIDE_MULTIPLE
    longest = math.floor(short * MAX_ASPECT / m) * m
    # Long sides as `image_ops.bucket_size` rounds them (in codes: multiple 4, aspect <= 2).
    longs = sorted(
        {
            image_ops.bucket_size(short, n, short, m, MAX_ASPECT)[1]
            for n in range(short, longest + 1)
        }
    )
    lo = [(short, n) for n in longs] + [(n, short) for n in longs if n != short]
    if stage == 2:
        return [Bucket(g) for g in lo]
    long_side = short * int(data.hires_scale)
    return [Bucket(g, tuple(image_ops.hires_size(g, long_side, 1))) for g in lo]


def micro_batches_that_fit(
    gib: float, fixed_gib: float, grad_accum: int, per_device: int, limit_gib: float
) -> int | None:
    """The smallest micro-batch count (a divisor of the per-device batch, >= `grad_accum`)
    whose estimated memory fits `limit_gib`: the activations (`gib - fixed_gib`) scale with
    the micro-batch; the parameters and optimizer state (`fixed_gib`) do not. None: none."""
    for a in range(grad_accum, per_device + 1):
        if per_device % a == 0 and fixed_gib + (gib - fixed_gib) * grad_accum / a <= limit_gib:
            return a
    return None
