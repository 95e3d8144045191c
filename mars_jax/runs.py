"""Load a trained model for sampling: a training run, one step of it, or an exported bundle.

`--checkpoint` may name

- a run directory (`config.json`, `run_info.json`, `checkpoints/`), local or a URL such as
  `gs://bucket/run`; `--step` picks a checkpoint (default: the latest);
- a step of a run, `<run>/checkpoints/<N>`;
- a bundle written by `python -m mars_jax.export` (`bundle.json`): self-contained weights,
  VQ tokenizer, image sizes and sampling defaults, loadable without the training data or
  the base checkpoint.

A run that kept a moving average of its weights (`optim.ema_decay`) is sampled from it;
`--weights=trained` picks the optimizer's weights instead. A run's frozen LLM is reloaded
from the base it recorded and checked against the recorded hash. Nothing of the training
loop is imported: sampling needs neither the optimizer nor the data pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from mars_jax.data import manifest as manifest_lib
from mars_jax.model import params as params_lib
from mars_jax.model.config import ModelConfig
from mars_jax.sampling.images import TrainedModel
from mars_jax.sampling.options import run_options
from mars_jax.train_lib import base as base_lib
from mars_jax.train_lib import checkpoint as ckpt_lib
from mars_jax.train_lib import ema, run_info
from mars_jax.train_lib import workdir as workdir_lib
from mars_jax.vq.checkpoint import load_vq

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "mars_jax.bundle/1"
# `--weights`: the moving average of a run's weights, or the optimizer's weights.
WEIGHTS = ("ema", "trained")


@dataclasses.dataclass
class LoadedRun(TrainedModel):
    """A `TrainedModel` with where it came from: the run's resolved config, the step."""

    config: Any = None  # ml_collections.ConfigDict
    step: int = 0
    stage: int = 1
    sample: dict = dataclasses.field(default_factory=dict)  # sampling defaults
    source: str = ""  # the run or bundle directory
    weights: str = "trained"  # "ema": the run's moving average of its weights


@dataclasses.dataclass(frozen=True)
class Location:
    """What `--checkpoint` names: `kind` is "run" or "bundle"."""

    kind: str
    root: str
    step: int | None


def locate(path: str, step: int | None = None, flag: str = "--checkpoint") -> Location:
    """Resolve `--checkpoint` (or the command's `flag`) and `--step` without loading anything."""
    root = workdir_lib.resolve(path)
    if (root / BUNDLE_FILE).exists():
        if step is not None:
            raise ValueError(f"--step: {path} is a bundle of one step; drop --step")
        return Location("bundle", os.fspath(root), None)
    if (root / "config.json").exists():
        return Location("run", os.fspath(root), step)
    parent = root.parent
    if parent.name == ckpt_lib.CHECKPOINT_DIR and root.name.isdigit():
        run = parent.parent
        if (run / "config.json").exists():
            if step is not None and step != int(root.name):
                raise ValueError(f"--step={step}: --checkpoint names step {root.name}")
            return Location("run", os.fspath(run), int(root.name))
    if not root.exists():
        raise FileNotFoundError(f"{flag}={path}: no such directory")
    raise FileNotFoundError(
        f"{flag}={path}: not a training run (no config.json), a step of one "
        f"(<run>/{ckpt_lib.CHECKPOINT_DIR}/<N>) or a bundle (no {BUNDLE_FILE})"
    )


def _read_json(root: str, name: str) -> dict:
    return json.loads((workdir_lib.resolve(root) / name).read_text())


def read_config(path: str) -> dict:
    """The resolved config of a run or bundle, as a dict."""
    where = locate(path)
    return _read_json(where.root, "config.json")


def sample_defaults(path: str) -> dict[str, Any]:
    """The sampling options a run or bundle was tuned with (absent ones: library defaults)."""
    return run_options(read_config(path).get("sample"))


def caption_candidates(path: str) -> int:
    """Captions a run or bundle writes per image by default: its `sample.caption_candidates`,
    or where that is 0 or absent (runs saved before it), its `sample.candidates`."""
    sample = read_config(path).get("sample") or {}
    return int(sample.get("caption_candidates") or 0) or run_options(sample)["candidates"]


def trained_captions(path: str) -> bool:
    """Whether the run or bundle trained the caption task (what `--candidates` ranks with)."""
    return float(read_config(path).get("data", {}).get("caption_ratio", 0.0)) > 0.0


def describe(path: str, step: int | None = None) -> dict[str, Any]:
    """What sampling needs to check its flags before loading weights: stage, grids, sizes,
    VQ factor-free facts (`run_info.json` or the bundle's)."""
    where = locate(path, step)
    if where.kind == "bundle":
        return _read_json(where.root, BUNDLE_FILE)
    info = run_info.read(where.root)
    if info is None:  # a run trained before run_info.json: its data's manifest
        config = ml_collections.ConfigDict(_read_json(where.root, "config.json"))
        info = run_info.describe(config)
    return info


def _on_one_device(tree: Any) -> Any:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda _: device, tree)


def kept_ema(path: str) -> bool:
    """Whether a run keeps a moving average of its weights (`optim.ema_decay` > 0)."""
    return ema.decay_of(read_config(path).get("optim", {})) > 0.0


def check_weights(path: str, weights: str | None) -> None:
    """`--weights` against the run it names (None: the run's default, nothing to check)."""
    if weights is None:
        return
    if weights not in WEIGHTS:
        raise ValueError(f"--weights={weights}: expected one of {', '.join(WEIGHTS)}")
    if locate(path).kind == "bundle":
        raise ValueError(
            f"--weights={weights}: {path} is a bundle; it holds the weights it was exported with"
        )
    if weights == "ema" and not kept_ema(path):
        raise ValueError(
            f"--weights=ema: {path} kept no moving average of its weights (optim.ema_decay=0)"
        )


def load_run(
    path: str, step: int | None = None, vq_dir: str | None = None, weights: str | None = None
) -> LoadedRun:
    """A run (its `step`, default the latest) or a bundle, on one device. ``weights``: "ema"
    or "trained" (`WEIGHTS`); None: the moving average when the run kept one."""
    check_weights(path, weights)
    where = locate(path, step)
    if where.kind == "bundle":
        return _load_bundle(where.root, vq_dir)
    return _load_run(where.root, where.step, vq_dir, weights)


def _load_run(root: str, step: int | None, vq_dir: str | None, weights: str | None) -> LoadedRun:
    config = ml_collections.ConfigDict(_read_json(root, "config.json"))
    info = describe(root)
    model_cfg = ModelConfig.from_dict(config.model)
    abstract = params_lib.abstract_params(model_cfg)
    base_config = ml_collections.ConfigDict(config.base.to_dict())
    base_config.checkpoint = info.get("base_checkpoint") or base_config.checkpoint
    frozen, identity = base_lib.load_frozen(
        base_config, model_cfg, _on_one_device(abstract["frozen"])
    )
    manager = ckpt_lib.make_manager(root, 1, 0, False)
    steps = sorted(manager.all_steps())
    if not steps:
        raise FileNotFoundError(f"--checkpoint={root}: no checkpoint under checkpoints/")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"--checkpoint={root}: no step {step} (steps: {steps})")
    step = steps[-1] if step is None else step
    ckpt_lib.check_base(ckpt_lib.read_base_identity(manager, step), identity, root)
    manager.close()
    loaded = ckpt_lib.load_trainable_from(
        root,
        abstract["trainable"],
        _on_one_device(abstract["trainable"]),
        step,
        "--checkpoint",
        weights or "sampled",
    )
    trainable, missing = loaded.trainable, loaded.missing
    if missing:
        raise ValueError(f"--checkpoint={root}: checkpoint lacks trainable params {missing}")
    vq_dir = vq_dir or info.get("vq_dir", "")
    if not vq_dir:
        raise ValueError(f"--checkpoint={root}: the run names no VQ tokenizer; pass --vq=<dir>")
    vq_cfg, vq_params = load_vq(vq_dir)
    return LoadedRun(
        frozen=frozen,
        trainable=trainable,
        model_cfg=model_cfg,
        text_len=int(config.data.text_len),
        vq_cfg=vq_cfg,
        vq_params=vq_params,
        grids=[tuple(g) for g in info["grids"]] or [manifest_lib.default_grid(vq_cfg)],
        sr_sizes=[(tuple(lo), tuple(hi)) for lo, hi in info.get("sr_sizes", [])],
        resolution_prefix=int(config.stage) >= 2,
        config=config,
        step=int(step),
        stage=int(config.stage),
        sample=run_options(config.get("sample")),
        source=root,
        weights=loaded.weights,
    )


def _load_bundle(root: str, vq_dir: str | None) -> LoadedRun:
    info = _read_json(root, BUNDLE_FILE)
    if info.get("format") != BUNDLE_FORMAT:
        raise ValueError(
            f"{root}/{BUNDLE_FILE}: format {info.get('format')!r}, not {BUNDLE_FORMAT}"
        )
    config = ml_collections.ConfigDict(_read_json(root, "config.json"))
    model_cfg = ModelConfig.from_dict(config.model)
    abstract = params_lib.abstract_params(model_cfg)
    shardings = _on_one_device(abstract)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    with ocp.StandardCheckpointer() as ckptr:
        weights = ckptr.restore(os.path.join(root, "params"), target)
    identity = base_lib.identity(info["base"]["source"], weights["frozen"])
    if identity["hash"] != info["base"]["hash"]:
        raise ValueError(f"{root}: its frozen weights do not match the hash in {BUNDLE_FILE}")
    vq_cfg, vq_params = load_vq(vq_dir or os.path.join(root, "vq"))
    return LoadedRun(
        frozen=weights["frozen"],
        trainable=weights["trainable"],
        model_cfg=model_cfg,
        text_len=int(info["text_len"]),
        vq_cfg=vq_cfg,
        vq_params=vq_params,
        grids=[tuple(g) for g in info["grids"]],
        sr_sizes=[(tuple(lo), tuple(hi)) for lo, hi in info["sr_sizes"]],
        resolution_prefix=int(info["stage"]) >= 2,
        config=config,
        step=int(info["step"]),
        stage=int(info["stage"]),
        sample=dict(info["sample"]),
        source=root,
        weights=str(info.get("weights", "trained")),
    )
