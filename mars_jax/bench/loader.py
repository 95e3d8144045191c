"""Loader throughput: stage-I batches from real ArrayRecord shards through the Grain pipeline.

    python -m mars_jax.bench.loader [--num_examples=4096] [--batch_size=256] [--worker_count=0]

Shards are written to a temporary directory from precomputed random codes and token ids
(paper shapes: 16×16 grid, 8,192 codes, captions of 10–150 tokens), so the figure measures
record reading, decoding and batch assembly, not the VQ-GAN. Last line:
``loader_examples_per_s=<n>``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from mars_jax.data import pipeline, precomputed
from mars_jax.data.config import default_data_config
from mars_jax.tokens import vocab


def _examples(n: int, grid: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield {
            "key": f"bench-{i}",
            "text_ids": rng.integers(0, vocab.ENDOFTEXT, int(rng.integers(10, 150))),
            "codes": rng.integers(0, vocab.NUM_IMAGE_CODES, (grid, grid)),
        }


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(prog="python -m mars_jax.bench.loader", description=__doc__)
    p.add_argument("--num_examples", type=int, default=4096)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--num_batches", type=int, default=32)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--text_len", type=int, default=128)
    p.add_argument("--worker_count", type=int, default=0)
    p.add_argument("--read_threads", type=int, default=4)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        precomputed.write_precomputed_shards(
            out, _examples(a.num_examples, a.grid), 1, vocab.NUM_IMAGE_CODES, shard_size=1024
        )
        print(f"wrote {a.num_examples} records in {time.perf_counter() - t0:.1f}s")
        c = default_data_config(1)
        c.update(
            shards=out,
            text_len=a.text_len,
            worker_count=a.worker_count,
            read_threads=a.read_threads,
            num_epochs=1000,
        )
        it = pipeline.make_train_iterator(c, a.batch_size)
        for _ in range(2):  # warm-up: threads, workers, first reads
            next(it)
        t0 = time.perf_counter()
        for _ in range(a.num_batches):
            batch = next(it)
        dt = time.perf_counter() - t0
        rows = sum(t["tokens"].shape[0] for t in batch.values())
        rate = a.num_batches * rows / dt
        print(f"{a.num_batches} batches of {rows} in {dt:.2f}s ({dt / a.num_batches * 1e3:.1f} ms)")
        print(f"loader_examples_per_s={rate:.0f}")
    return rate


if __name__ == "__main__":
    main()
