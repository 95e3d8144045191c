"""Load a trained run for sampling: its config, weights, VQ tokenizer and image sizes.

A run directory holds `config.json` (the resolved config) and Orbax checkpoints; the frozen
LLM is reloaded from the base the run recorded and checked against the recorded hash. The
image grids (stage I/II) and the low-/high-res sizes (stage III) come from the training
data's manifest. Nothing of the training loop is imported: sampling needs neither the
optimizer nor the data pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections

from mars_jax.data import manifest as manifest_lib
from mars_jax.model import params as params_lib
from mars_jax.model.config import ModelConfig
from mars_jax.sampling.images import TrainedModel
from mars_jax.sampling.options import run_options
from mars_jax.train_lib import base as base_lib
from mars_jax.train_lib import checkpoint as ckpt_lib
from mars_jax.vq.checkpoint import load_vq


@dataclasses.dataclass
class LoadedRun(TrainedModel):
    """A `TrainedModel` with the run's resolved config and the step it was loaded from."""

    config: Any = None  # ml_collections.ConfigDict
    step: int = 0


def read_config(workdir: str) -> dict:
    """The resolved config a run saved (`config.json`), as a dict."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--checkpoint={workdir}: no config.json (not a training workdir)")
    with open(path) as f:
        return json.load(f)


def sample_defaults(workdir: str) -> dict[str, Any]:
    """The sampling options of a run's `sample` section (absent ones: library defaults)."""
    return run_options(read_config(workdir).get("sample"))


def load_run(workdir: str, vq_dir: str | None = None) -> LoadedRun:
    """Frozen + trainable params of the latest checkpoint in `workdir`, on one device."""
    config = ml_collections.ConfigDict(read_config(workdir))
    model_cfg = ModelConfig.from_dict(config.model)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = params_lib.abstract_params(model_cfg)
    on_device = lambda tree: jax.tree.map(lambda _: device, tree)
    frozen, identity = base_lib.load_frozen(config.base, model_cfg, on_device(abstract["frozen"]))
    manager = ckpt_lib.make_manager(workdir, 1, 0, False)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"--checkpoint={workdir}: no checkpoint under checkpoints/")
    ckpt_lib.check_base(ckpt_lib.read_base_identity(manager, step), identity, workdir)
    manager.close()
    trainable, missing = ckpt_lib.load_trainable_from(
        workdir, abstract["trainable"], on_device(abstract["trainable"])
    )
    if missing:
        raise ValueError(f"--checkpoint={workdir}: checkpoint lacks trainable params {missing}")
    grids, sr_sizes = [], []
    if config.data.get("shards"):
        manifest = manifest_lib.load_manifest(config.data.shards)
        vq_dir = vq_dir or manifest_lib.vq_dir(manifest)
        grids, sr_sizes = manifest_lib.grids(manifest), manifest_lib.sr_sizes(manifest)
    if not vq_dir:
        raise ValueError(f"--checkpoint={workdir}: the run names no VQ tokenizer; pass --vq=<dir>")
    vq_cfg, vq_params = load_vq(vq_dir)
    return LoadedRun(
        frozen=frozen,
        trainable=trainable,
        model_cfg=model_cfg,
        text_len=int(config.data.text_len),
        vq_cfg=vq_cfg,
        vq_params=vq_params,
        grids=grids or [manifest_lib.default_grid(vq_cfg)],
        sr_sizes=sr_sizes,
        config=config,
        step=int(step),
    )
