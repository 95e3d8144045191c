"""`run_info.json`: what a run's samplers need to know of its data, written when training
starts, so that a run samples from any directory without its training data.

It records the image grids and (stage III) the low-/high-res sizes the run trains on, the
VQ tokenizer the data was encoded with, the text slot, and absolute paths of the base
checkpoint and VQ (the config may name them relative to where training ran).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from mars_jax.data import manifest as manifest_lib
from mars_jax.data import pipeline
from mars_jax.train_lib import workdir as workdir_lib

FILE = "run_info.json"


def _absolute(path: str) -> str:
    return os.fspath(workdir_lib.resolve(path)) if path else ""


def describe(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The run's data facts (from the shards' manifest, or the synthetic data's config)."""
    data = config.data
    info: dict[str, Any] = {
        "stage": int(config.stage),
        "text_len": int(data.text_len),
        "base_checkpoint": _absolute(config.base.checkpoint),
        "vq_dir": _absolute(config.sample.get("vq", "")),
        "grids": [],
        "sr_sizes": [],
    }
    if data.get("synthetic", False):
        info["grids"] = [list(g) for g in pipeline.synthetic_image_grids(data)]
    elif data.get("shards"):
        manifest = manifest_lib.load_manifest(data.shards)
        info["vq_dir"] = info["vq_dir"] or _absolute(manifest_lib.vq_dir(manifest))
        info["grids"] = [list(g) for g in manifest_lib.grids(manifest)]
        info["sr_sizes"] = [[list(lo), list(hi)] for lo, hi in manifest_lib.sr_sizes(manifest)]
    return info


def write(workdir: str, config: ml_collections.ConfigDict) -> None:
    (workdir_lib.resolve(workdir) / FILE).write_text(json.dumps(describe(config), indent=2))


def read(workdir: str) -> dict[str, Any] | None:
    """The run's `run_info.json`, or None for a run trained before it existed."""
    path = workdir_lib.resolve(workdir) / FILE
    return json.loads(path.read_text()) if path.exists() else None
