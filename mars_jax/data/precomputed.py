"""Shards from already-computed VQ codes and token ids, without images or a VQ-GAN.

For data encoded elsewhere, and for loader benchmarks and pipeline tests that should not pay
for VQ encoding. Writes exactly what ``prepare`` writes (records, shard markers, manifest), so
the Grain pipeline cannot tell the difference.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable

import numpy as np

from mars_jax.data import prepare, records


def write_precomputed_shards(
    out: str,
    examples: Iterable[dict],
    stage: int,
    codebook_size: int,
    shard_size: int = 1024,
    downsample_factor: int = 16,
) -> dict:
    """Write records (fields of ``records.encode_record``) to ``out``; returns the manifest.

    Each example needs ``key``, ``text_ids`` and ``codes`` ([h, w]; stage III also
    ``lo_codes``); image sizes default to the grid times ``downsample_factor``.
    """
    f = downsample_factor
    num_shards = 0
    for shard, chunk in enumerate(prepare.chunks(examples, shard_size)):
        num_shards = shard + 1
        buckets: dict[str, dict] = {}
        hist = {"text": collections.Counter(), "refined_text": collections.Counter()}
        for ex in chunk:
            codes = np.asarray(ex["codes"])
            lo = np.asarray(ex["lo_codes"]) if stage == 3 else None
            rec = dict(ex)
            rec.setdefault("image_hw", [s * f for s in codes.shape])
            rec.setdefault("orig_hw", rec["image_hw"])
            if lo is not None:
                rec.setdefault("lo_image_hw", [s * f for s in lo.shape])
            hist["text"][len(ex["text_ids"])] += 1
            if len(ex.get("refined_ids", ())):
                hist["refined_text"][len(ex["refined_ids"])] += 1
            name = prepare.bucket_name(codes.shape, lo.shape if lo is not None else None)
            b = buckets.setdefault(
                name,
                {
                    "grid": list(codes.shape),
                    "lo_grid": list(lo.shape) if lo is not None else None,
                    "image_hw": list(rec["image_hw"]),
                    "lo_image_hw": list(rec["lo_image_hw"]) if lo is not None else None,
                    "records": [],
                },
            )
            b["records"].append(records.encode_record(rec))
        stats = {
            "counts": {"seen": len(chunk), "written": len(chunk), "skipped": 0},
            "filters": {},
            "skipped": [],
            "text_len_histogram": {k: dict(v) for k, v in hist.items()},
        }
        prepare.write_shard_outputs(out, shard, buckets, stats)
    header = {
        "stage": stage,
        "source": "precomputed",
        "codebook_size": codebook_size,
        "downsample_factor": f,
        "vq": None,
        "tokenizer": None,
    }
    os.makedirs(out, exist_ok=True)
    manifest = prepare.finalize(out, num_shards, header)
    assert manifest is not None
    return manifest
