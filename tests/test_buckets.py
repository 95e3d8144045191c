"""The buckets `--compile_only` checks, and its error for a bucket that does not fit."""

import pytest

from configs import stage1, stage2, stage3
from mars_jax.train_lib import buckets


def test_qwen7b_buckets_are_the_datas():
    names = lambda c: [b.name for b in buckets.stage_buckets(c.data)]
    assert names(stage1.get_config("qwen7b")) == ["16x16"]
    # Stage II: short side 256 px = 16 codes, long side up to aspect 2 in steps of 64 px.
    longs = [16, 20, 24, 28, 32]
    want = [f"16x{n}" for n in longs] + [f"{n}x16" for n in longs[1:]]
    assert names(stage2.get_config("qwen7b")) == want
    # Stage III: the same low-res grids; high-res long side 1,024 px = 64 codes, the aspect kept
    # as `image_ops.hires_size` rounds it (256x384 px -> 688x1024 px).
    b3 = buckets.stage_buckets(stage3.get_config("qwen7b").data)
    assert [b.grid for b in b3] == [tuple(int(x) for x in n.split("x")) for n in want]
    assert b3[0].hires == (64, 64) and b3[2].hires == (43, 64) and b3[4].hires == (32, 64)
    assert max(b.tokens for b in b3) == 16 * 16 + 64 * 64


def test_micro_batches_that_fit():
    # 10 GiB fixed + 90 GiB activations at 1 micro-batch: 4 micro-batches -> 32.5 GiB.
    assert buckets.micro_batches_that_fit(100.0, 10.0, 1, 8, 70.0) == 2
    assert buckets.micro_batches_that_fit(100.0, 10.0, 1, 8, 33.0) == 4
    assert buckets.micro_batches_that_fit(100.0, 10.0, 1, 8, 11.0) is None


def test_compile_only_fails_naming_the_bucket():
    from mars_jax import train

    c = stage2.get_config("tiny")
    c.model.image_logits = "vision_only"
    c.train.device_memory_gib = 1e-3
    with pytest.raises(SystemExit, match=r"bucket 4x4 needs .* GiB/device > train.device_memory"):
        train.compile_only(c)
