"""One validation pass over a training config, before anything is compiled or written.

``config_errors(config, num_devices, process_count)`` returns every problem as one line
``<key>=<value>: <rule>`` (types, ranges, enums, cross-field rules, mesh vs devices);
``check(config, ...)`` raises ``ConfigError`` holding them all. ``config_changes`` compares
a resumed run's config with the one its workdir was started with. The trainer CLI prints
each line as ``error: ...`` and exits non-zero without a traceback.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from mars_jax.model.config import ModelConfig
from mars_jax.tokens import formats
from mars_jax.train_lib import workdir as workdir_lib

# `optim.name` (train_lib/state.py builds them) and the trainable subtrees Muon may train.
OPTIMIZERS = ("adamw", "muon")
MUON_GROUPS = ("layers", "unfrozen_layers")

NONFINITE_POLICIES = ("skip", "stop")
ON_DAMAGE = ("fallback", "stop")
ON_BAD_RECORD = ("skip", "stop")
# `sampling.options.JUDGES`, without importing JAX into config checks.
JUDGES = ("pixels", "codes")
TASKS = formats.TASKS

# Keys whose change on resume is refused unless --allow_config_change: they change what
# is trained (stage, model shapes), the batch, or the data stream the iterator state indexes.
REFUSED_CHANGES = (
    "stage",
    "preset",
    "model.",
    "train.global_batch",
    "data.stage",
    "data.shards",
    "data.text_len",
    "data.grids",
    "data.hires_scale",
    "data.caption_ratio",
    "data.seed",
    "data.synthetic",
    "base.",
    "optim.name",  # the saved optimizer state is that optimizer's
)
# How the same model is compiled (same math up to float rounding): reported, resumed.
COMPILE_ONLY_CHANGES = ("model.scan_unroll", "model.remat_policy", "model.loss_chunk_size")


class ConfigError(ValueError):
    """Invalid configuration; ``lines`` holds one message per problem."""

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


def _get(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        if isinstance(node, Mapping) or hasattr(node, "keys"):
            if part not in node:
                return _MISSING
            node = node[part]
        else:
            return _MISSING
    return node


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Checker:
    def __init__(self, config: Any):
        self.config = config
        self.errors: list[str] = []

    def fail(self, key: str, value: Any, rule: str) -> None:
        self.errors.append(f"{key}={value!r}: {rule}")

    def value(self, key: str) -> Any:
        return _get(self.config, key)

    def int_(self, key: str, low: int | None = None, optional: bool = False) -> int | None:
        v = self.value(key)
        if v is _MISSING:
            if not optional:
                self.fail(key, v, "required key is missing")
            return None
        if not _is_int(v):
            self.fail(key, v, "must be an integer")
            return None
        if low is not None and v < low:
            self.fail(key, v, f"must be >= {low}")
            return None
        return v

    def float_(
        self,
        key: str,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        optional: bool = False,
    ) -> float | None:
        v = self.value(key)
        if v is _MISSING:
            if not optional:
                self.fail(key, v, "required key is missing")
            return None
        if not _is_number(v):
            self.fail(key, v, "must be a number")
            return None
        if not math.isfinite(v):
            self.fail(key, v, "must be finite")
            return None
        lo_ok = low is None or (v > low if low_open else v >= low)
        hi_ok = high is None or (v < high if high_open else v <= high)
        if not (lo_ok and hi_ok):
            lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
            hi = "" if high is None else f"{high}" + (")" if high_open else "]")
            if low is not None and high is not None:
                rule = f"must be in {lo}, {hi}"
            elif low is not None:
                rule = f"must be {'>' if low_open else '>='} {low}"
            else:
                rule = f"must be {'<' if high_open else '<='} {high}"
            self.fail(key, v, rule)
            return None
        return float(v)

    def enum(self, key: str, choices: Iterable[str], optional: bool = False) -> str | None:
        v = self.value(key)
        if v is _MISSING:
            if not optional:
                self.fail(key, v, "required key is missing")
            return None
        if v not in tuple(choices):
            self.fail(key, v, f"must be one of {tuple(choices)}")
            return None
        return v

    def bool_(self, key: str, optional: bool = False) -> None:
        v = self.value(key)
        if v is _MISSING:
            if not optional:
                self.fail(key, v, "required key is missing")
            return
        if not isinstance(v, bool):
            self.fail(key, v, "must be true or false")


def config_errors(
    config: Any, num_devices: int | None = None, process_count: int = 1, check_data: bool = True
) -> list[str]:
    """Every problem of ``config`` as one line; ``num_devices=None`` skips the mesh checks,
    ``check_data=False`` (compile-only) the need for shards."""
    c = _Checker(config)
    stage = c.int_("stage", 1)
    if stage is not None and stage not in (1, 2, 3):
        c.fail("stage", stage, "must be 1, 2 or 3")
    data_stage = c.value("data.stage")
    if stage is not None and data_stage is not _MISSING and data_stage != stage:
        c.fail("data.stage", data_stage, f"must equal stage={stage}")

    # optim
    c.enum("optim.name", OPTIMIZERS, optional=True)
    c.int_("optim.muon_ns_steps", 1, optional=True)
    groups = c.value("optim.muon_groups")
    if groups is not _MISSING and (
        not isinstance(groups, (tuple, list)) or not groups or not set(groups) <= set(MUON_GROUPS)
    ):
        c.fail("optim.muon_groups", groups, f"must be a non-empty tuple from {MUON_GROUPS}")
    c.float_("optim.peak_lr", 0.0, low_open=True)
    c.float_("optim.warmup_ratio", 0.0, 1.0)
    c.float_("optim.end_lr_ratio", 0.0, 1.0, optional=True)
    c.float_("optim.b1", 0.0, 1.0, high_open=True, optional=True)
    c.float_("optim.b2", 0.0, 1.0, high_open=True, optional=True)
    c.float_("optim.eps", 0.0, low_open=True, optional=True)
    c.float_("optim.weight_decay", 0.0, optional=True)
    c.float_("optim.grad_clip", 0.0, optional=True)
    c.float_("optim.unfrozen_lr_scale", 0.0, optional=True)
    c.float_("optim.ema_decay", 0.0, 1.0, high_open=True, optional=True)

    # train
    global_batch = c.int_("train.global_batch", 1)
    grad_accum = c.int_("train.grad_accum", 1)
    c.int_("train.num_steps")
    c.int_("train.log_every", 1)
    c.int_("train.reading_every", 0, optional=True)
    c.int_("train.seed")
    c.enum("train.nonfinite", NONFINITE_POLICIES)
    c.int_("train.max_consecutive_skips", 0, optional=True)
    c.float_("train.peak_flops_per_device", 0.0, optional=True)
    c.float_("train.image_code_noise", 0.0, 1.0, high_open=True, optional=True)
    weights = c.value("train.task_weights")
    if weights is not _MISSING:
        for task in weights:
            if task not in TASKS:
                c.fail(f"train.task_weights.{task}", weights[task], f"task must be one of {TASKS}")
            else:
                c.float_(f"train.task_weights.{task}", 0.0, low_open=True)
    if global_batch and grad_accum and global_batch % grad_accum:
        c.fail(
            "train.grad_accum",
            grad_accum,
            f"must divide train.global_batch={global_batch}",
        )
    if global_batch and process_count > 1 and global_batch % process_count:
        c.fail("train.global_batch", global_batch, f"must divide over {process_count} processes")

    # checkpoint
    c.int_("checkpoint.every_steps", 1)
    c.int_("checkpoint.keep", 0)
    c.bool_("checkpoint.async_save")
    c.enum("checkpoint.on_damage", ON_DAMAGE, optional=True)
    c.bool_("checkpoint.checksums", optional=True)

    # data
    c.float_("data.caption_ratio", 0.0, 1.0)
    c.float_("data.caption_dropout", 0.0, 1.0)
    c.float_("data.refined_caption_prob", 0.0, 1.0)
    c.int_("data.text_len", 1)
    c.int_("data.num_epochs", 1)
    c.int_("data.worker_count", 0)
    c.int_("data.worker_buffer_size", 1)
    c.int_("data.read_threads", 1)
    c.int_("data.seed")
    c.int_("data.num_examples", 0, optional=True)
    c.enum("data.on_bad_record", ON_BAD_RECORD, optional=True)
    c.int_("data.max_bad_records", 0, optional=True)
    synthetic = bool(c.value("data.synthetic") is True)
    demo = bool(c.value("data.demo_scenes") not in (_MISSING, 0, None))
    shards = c.value("data.shards")
    if check_data and not synthetic and not demo and not shards:
        c.fail("data.shards", shards, "must name a prepared shards directory (or data.synthetic)")
    grids = c.value("data.grids")
    if grids is not _MISSING and not _grids_ok(grids):
        c.fail("data.grids", grids, "must be a non-empty list of (rows, cols) > 0")
    c.int_("data.hires_scale", 1)

    # sample
    c.int_("sample.every_steps", 0, optional=True)
    candidates = c.int_("sample.candidates", 1, optional=True)
    caption_candidates = c.int_("sample.caption_candidates", 0, optional=True)
    c.enum("sample.judge", JUDGES, optional=True)
    c.float_("sample.blank_std", 0.0, optional=True)
    c.int_("sample.blank_redraws", 0, optional=True)
    ranked = (
        ("sample.candidates", candidates, "ranks images by the model's own captions"),
        ("sample.caption_candidates", caption_candidates, "ranks the model's own captions"),
    )
    for key, n, what in ranked:
        if n and n > 1 and c.value("data.caption_ratio") in (0, 0.0):
            c.fail(key, n, f"{what}: needs data.caption_ratio > 0")

    # base
    c.bool_("base.demo_lm", optional=True)
    if c.value("base.demo_lm") is True and not c.value("base.checkpoint"):
        c.fail("base.checkpoint", "", "must name where base.demo_lm writes the demo LLM")

    # model
    _model_errors(c)

    # mesh
    shape = c.value("mesh.shape")
    if not _int_seq(shape, 3):
        c.fail("mesh.shape", shape, "must be 3 integers (data, fsdp, tensor); one may be -1")
    elif num_devices is not None:
        _mesh_errors(c, tuple(shape), num_devices, global_batch, grad_accum, process_count)
    dcn = c.value("mesh.dcn_shape")
    if (
        dcn is not _MISSING
        and dcn is not None
        and not (_int_seq(dcn, 3) and all(s >= 1 for s in dcn))
    ):
        c.fail("mesh.dcn_shape", dcn, "must be 3 positive integers")
    return c.errors


def _int_seq(v: Any, n: int) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == n and all(_is_int(s) for s in v)


def _grids_ok(grids: Any) -> bool:
    return (
        isinstance(grids, (list, tuple))
        and len(grids) > 0
        and all(_int_seq(g, 2) and min(g) > 0 for g in grids)
    )


def _model_errors(c: _Checker) -> None:
    layers = c.int_("model.num_layers", 1)
    del layers
    width = c.int_("model.width", 1)
    heads = c.int_("model.num_heads", 1)
    kv = c.int_("model.num_kv_heads", 1)
    head_dim = c.int_("model.head_dim", 1)
    c.int_("model.mlp_dim", 1)
    c.int_("model.vision_mlp_dim", 0, optional=True)
    if heads and kv and heads % kv:
        c.fail("model.num_kv_heads", kv, f"must divide model.num_heads={heads}")
    if head_dim and head_dim % 2:
        c.fail("model.head_dim", head_dim, "must be even (rotary embeddings)")
    del width
    try:
        model = c.value("model")
        if model is not _MISSING and not c.errors_for("model."):
            ModelConfig.from_dict(model)
    except (ValueError, TypeError) as e:
        text = " ".join(str(e).split())
        c.errors.append(text if text.startswith("model") else f"model: {text}")


def _errors_for(self: _Checker, prefix: str) -> bool:
    return any(e.startswith(prefix) for e in self.errors)


_Checker.errors_for = _errors_for  # type: ignore[attr-defined]


def _mesh_errors(c, shape, num_devices, global_batch, grad_accum, process_count) -> None:
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        c.fail("mesh.shape", shape, "entries must be positive, at most one -1")
        return
    known = math.prod(s for s in shape if s != -1)
    dcn = c.value("mesh.dcn_shape")
    granules = math.prod(dcn) if _int_seq(dcn, 3) and min(dcn) >= 1 else 1
    per_slice = num_devices // granules if num_devices % granules == 0 else None
    if per_slice is None:
        c.fail("mesh.dcn_shape", dcn, f"its product must divide the {num_devices} devices")
        return
    if -1 in shape:
        if per_slice % known:
            c.fail("mesh.shape", shape, f"does not fit {per_slice} devices")
            return
        shape = tuple(per_slice // known if s == -1 else s for s in shape)
    elif math.prod(shape) != per_slice:
        c.fail(
            "mesh.shape",
            shape,
            f"needs {math.prod(shape)} devices but {per_slice} are available",
        )
        return
    batch_shards = shape[0] * shape[1] * (dcn[0] * dcn[1] if granules > 1 else 1)
    if global_batch and grad_accum and global_batch % grad_accum == 0:
        micro = global_batch // grad_accum
        if micro % batch_shards:
            c.fail(
                "train.global_batch",
                global_batch,
                f"global_batch / grad_accum = {micro} must divide over the {batch_shards} "
                "batch shards (mesh data x fsdp)",
            )


def check(
    config: Any, num_devices: int | None = None, process_count: int = 1, check_data: bool = True
) -> None:
    errors = config_errors(config, num_devices, process_count, check_data)
    if errors:
        raise ConfigError(errors)


# ------------------------------------------------------------------------------ typos


def flat_keys(config: Any, prefix: str = "") -> list[str]:
    out = []
    for key in config.keys():
        value = config[key]
        name = f"{prefix}{key}"
        out.append(name)
        if hasattr(value, "keys") and not isinstance(value, str):
            out += flat_keys(value, name + ".")
    return out


def did_you_mean(key: str, keys: Iterable[str]) -> str:
    keys = list(keys)
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
        match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        close = [by_leaf[match[0]]] if match else []
    return f"; did you mean {close[0]!r}?" if close else ""


# ------------------------------------------------------------------------------ resume


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    if isinstance(d, Mapping):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        if not d and prefix:
            out[prefix[:-1]] = {}
        return out
    if isinstance(d, tuple):
        d = list(d)
    out[prefix[:-1]] = d
    return out


# Set by `prepare` from the mesh; not a choice of the user.
_DERIVED = ("data.task_batch_multiple",)
# Keys added since earlier runs were saved: their value in a config that lacks them.
_ADDED = {
    "optim.name": "adamw",
    "optim.muon_groups": list(MUON_GROUPS),
    "optim.muon_ns_steps": 5,
    "optim.ema_decay": 0.0,
    "sample.candidates": 1,
    "sample.caption_candidates": 0,  # 0: `sample.candidates`, what runs before it wrote
    "sample.judge": "pixels",  # a sampling choice: runs saved before it are judged so too
    "sample.blank_std": 3.0,  # a sampling choice too: their best of N skips empty canvases
    "sample.blank_redraws": 3,  # and their single draws are drawn again when blank
    "model.scan_unroll": 1,
    "train.image_code_noise": 0.0,
}


def config_changes(old: Mapping, new: Mapping) -> tuple[list[str], list[str]]:
    """``(refused, harmless)`` lines, one per key that differs between two resolved configs."""
    a, b = _flatten(old), _flatten(new)
    refused, harmless = [], []
    for key in sorted(set(a) | set(b)):
        if key in _DERIVED:
            continue
        absent = _ADDED.get(key, "<absent>")
        was, now = a.get(key, absent), b.get(key, absent)
        if was == now:
            continue
        line = f"{key}: {was!r} -> {now!r}"
        refused_key = any(
            key == p or (p.endswith(".") and key.startswith(p)) for p in REFUSED_CHANGES
        )
        if refused_key and key not in COMPILE_ONLY_CHANGES:
            refused.append(line)
        else:
            harmless.append(line)
    return refused, harmless


# ------------------------------------------------------------------------------ paths


def workdir_errors(workdir: str) -> list[str]:
    """A local workdir must be (or be creatable as) a writable directory; nothing is created."""

    if not workdir:
        return ["--workdir='': required"]
    if workdir_lib.is_remote(workdir):
        return []
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        return [f"--workdir={workdir!r}: is a file, not a directory"]
    checkpoints = os.path.join(path, "checkpoints")
    for target in (path, checkpoints):
        if os.path.exists(target):
            if not os.path.isdir(target):
                return [f"--workdir={workdir!r}: {target} is a file, not a directory"]
            if not os.access(target, os.W_OK | os.X_OK):
                return [f"--workdir={workdir!r}: {target} is not writable"]
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return [f"--workdir={workdir!r}: {probe} is a file, not a directory"]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [f"--workdir={workdir!r}: cannot create it ({probe} is not writable)"]
    return []
