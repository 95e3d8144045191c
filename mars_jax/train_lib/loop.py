"""The training run: checks, placement on the mesh, resume, the step loop, checkpoints, logs.

``prepare(config, workdir)`` does everything that can fail cheaply (mesh vs devices, batch
divisibility, base and init_from paths, config agreement between processes) before any
compilation, and builds the mesh, shardings and optimizer. ``run(config, workdir)`` then
trains: it resumes from the latest complete checkpoint of ``workdir`` when there is one, so
restarting the same command continues exactly where the last checkpoint left off.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from mars_jax.data import pipeline
from mars_jax.model import loss as loss_lib
from mars_jax.model import params as params_lib
from mars_jax.model.config import ModelConfig
from mars_jax.train_lib import (
    augment,
    distributed,
    integrity,
    metrics,
    preview,
    reading,
    run_info,
    schedule,
    sharding,
    validate,
)
from mars_jax.train_lib import base as base_lib
from mars_jax.train_lib import checkpoint as ckpt_lib
from mars_jax.train_lib import ema as ema_lib
from mars_jax.train_lib import state as state_lib
from mars_jax.train_lib import step as step_lib
from mars_jax.train_lib import workdir as workdir_lib

log = logging.getLogger(__name__)

NONFINITE_POLICIES = validate.NONFINITE_POLICIES


class NonFiniteError(RuntimeError):
    """A step's loss or gradients are not finite (``train.nonfinite="stop"``), too many
    consecutive updates were skipped (``train.max_consecutive_skips``), or the train state
    itself is not finite."""


class ConfigChangeError(validate.ConfigError):
    """A resume with a config that changes what is trained (``--allow_config_change``)."""


@dataclasses.dataclass
class Setup:
    """What ``prepare`` resolved: the pieces a run (or a compile-only check) needs."""

    config: ml_collections.ConfigDict
    model_cfg: ModelConfig
    mesh: Mesh
    num_steps: int
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    abstract_frozen: Any
    abstract_state: dict
    frozen_shardings: Any
    state_shardings: dict
    config_json: str
    # Hashable identity of everything the compiled functions depend on (caches below).
    key: tuple


def resolved_config_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def epoch_steps(config: ml_collections.ConfigDict, process_count: int) -> int:
    """Steps of ``data.num_epochs`` passes: the batches the shards' iterator yields, else
    ``data.num_examples / global_batch`` (presets whose shards are not on this machine).

    ``config.data.task_batch_multiple`` must already be set (``prepare`` does it): it shapes
    the task sub-batches, hence which buckets fill a batch.
    """
    data = config.data
    global_batch = int(config.train.global_batch)
    shards = data.shards
    if shards and not data.synthetic:
        manifest = workdir_lib.resolve(shards) / "manifest.json"
        if not manifest.exists() and not int(data.num_examples):
            raise FileNotFoundError(
                f"train.num_steps <= 0 asks for data.num_epochs passes, but {manifest} does "
                "not exist (prepare the shards with `python -m mars_jax.data.prepare`, or set "
                "train.num_steps or data.num_examples)"
            )
        if manifest.exists():
            steps = pipeline.num_batches(data, global_batch, process_count)
            if steps < 1:
                raise ValueError(
                    f"data.shards={shards!r} yields no full batch of train.global_batch="
                    f"{global_batch} over {process_count} process(es) in data.num_epochs="
                    f"{data.num_epochs}: every bucket is smaller than one process's batch"
                )
            return steps
    return schedule.total_steps(
        0, float(data.num_epochs), int(data.num_examples) or None, global_batch
    )


def check_shards_fit_model(shards_dir: str, model_cfg: ModelConfig) -> None:
    """Fail before compiling when the data's VQ has more codes than the model's vision head,
    or its grids do not fit `model.image_pos_grid`."""

    if not os.path.exists(os.path.join(shards_dir, "manifest.json")):
        return  # the pipeline reports missing shards
    manifest = pipeline.load_manifest(shards_dir)
    codebook = int(manifest["codebook_size"])
    if codebook > model_cfg.codebook_size:
        raise ValueError(
            f"{shards_dir}: the shards' VQ has {codebook} codes, but model.codebook_size="
            f"{model_cfg.codebook_size}; set model.codebook_size >= {codebook}"
        )
    for name, bucket in sorted(manifest["buckets"].items()):
        model_cfg.check_image_grid(bucket["grid"], f"{shards_dir} bucket {name}")


def prepare(
    config: ml_collections.ConfigDict,
    devices: list[jax.Device] | None = None,
    check_paths: bool = True,
) -> Setup:
    """Validate the config against the devices and data, build mesh, shardings, optimizer.

    ``check_paths=False`` (compile-only) skips the checks of the base and ``init_from`` paths,
    which an abstract compile does not read.
    """
    config = ml_collections.ConfigDict(config.to_dict())  # private copy
    devices = list(jax.devices() if devices is None else devices)
    # Every problem of the config at once, one line each (validate.py), before anything else.
    validate.check(config, len(devices), jax.process_count(), check_data=check_paths)
    model_cfg = ModelConfig.from_dict(config.model)
    train = config.train
    mesh = sharding.make_mesh(config.mesh.shape, config.mesh.get("dcn_shape"), devices)
    sharding.check_batch_fits(
        int(train.global_batch), int(train.grad_accum), mesh, jax.process_count()
    )
    # Every task sub-batch (of every micro-batch) must split over this process's batch shards.
    local_shards = max(1, sharding.batch_shards(mesh) // jax.process_count())
    config.data.task_batch_multiple = local_shards * int(train.grad_accum)
    if check_paths:
        base_lib.check_base_exists(config.base.checkpoint)
    if check_paths and config.base.init_from:
        if not ckpt_lib.checkpoint_dir(config.base.init_from).is_dir():
            raise FileNotFoundError(
                f"base.init_from={config.base.init_from!r}: no {ckpt_lib.CHECKPOINT_DIR}/ "
                "there (train the previous stage first, or fix the path)"
            )
    if config.data.synthetic:
        for grid in pipeline.synthetic_image_grids(config.data):
            model_cfg.check_image_grid(grid, "data.grids (synthetic)")
    elif check_paths:
        shard_problems = pipeline.shards_errors(config.data.shards)
        if shard_problems:
            raise validate.ConfigError(shard_problems)
        check_shards_fit_model(config.data.shards, model_cfg)
    num_steps = int(train.num_steps)
    if num_steps <= 0:
        num_steps = epoch_steps(config, jax.process_count())
    config.train.num_steps = num_steps
    config_json = distributed.canonical_json(resolved_config_dict(config))
    distributed.assert_same_across_processes("config", distributed.config_hash(config_json))

    tx, lr = state_lib.make_optimizer(config.optim, num_steps)
    abstract = params_lib.abstract_params(model_cfg)
    logical = params_lib.logical_axes(model_cfg)
    rules = [tuple(r) for r in config.mesh.rules]
    frozen_shardings = sharding.tree_shardings(abstract["frozen"], logical["frozen"], mesh, rules)
    trainable_shardings = sharding.tree_shardings(
        abstract["trainable"], logical["trainable"], mesh, rules
    )
    abstract_state = state_lib.abstract_state(
        abstract["trainable"], tx, ema_lib.decay_of(config.optim) > 0
    )
    state_shardings = state_lib.state_shardings(abstract_state, trainable_shardings, tx, mesh)
    return Setup(
        config=config,
        model_cfg=model_cfg,
        mesh=mesh,
        num_steps=num_steps,
        tx=tx,
        lr_schedule=lr,
        abstract_frozen=abstract["frozen"],
        abstract_state=abstract_state,
        frozen_shardings=frozen_shardings,
        state_shardings=state_shardings,
        config_json=config_json,
        key=(
            model_cfg,
            json.dumps(config.optim.to_dict(), sort_keys=True, default=str),
            num_steps,
            int(train.grad_accum),
            task_weights(config),
            _noise_key(config),
            mesh,
            tuple((str(n), _hashable(a)) for n, a in rules),
        ),
    )


def sampled_weights(state: dict) -> Any:
    """The weights a run samples with: its moving average when it keeps one."""
    return state.get(ema_lib.EMA_KEY, state["trainable"])


def task_weights(config: ml_collections.ConfigDict) -> tuple[tuple[str, float], ...]:
    """`train.task_weights` as hashable `(task, weight)` pairs; configs of runs that predate
    the key weigh every token 1."""
    weights = config.train.get("task_weights") or {}
    return tuple(sorted((str(k), float(v)) for k, v in dict(weights).items()))


def _noise_key(config: ml_collections.ConfigDict) -> tuple[float, int]:
    """What the step's image-code noise depends on: its rate and, when on, the seed."""
    rate = float(config.train.get("image_code_noise", 0.0))
    return rate, int(config.train.seed) if rate > 0 else 0


def _augment(setup: Setup):
    """The batch change before each step (``train.image_code_noise``), or None."""
    rate, seed = _noise_key(setup.config)
    if rate <= 0:
        return None
    codebook_size = int(setup.model_cfg.codebook_size)
    return lambda batch, step: augment.corrupt_batch(batch, seed, step, rate, codebook_size)


def _hashable(axes: Any) -> Any:
    return tuple(axes) if isinstance(axes, (list, tuple)) else axes


# ------------------------------------------------------------------------------ step factory


# Compiled functions are cached per ``Setup.key`` (and layouts), so runs in one process (tests,
# a restart after preemption) reuse them instead of compiling again.
_STEPS: dict[tuple, Any] = {}
_INITS: dict[tuple, Any] = {}
_PROBES: dict[tuple, Any] = {}


def _layouts_key(layouts: dict) -> tuple:
    return tuple(sorted((k, tuple(tuple(s) for s in v)) for k, v in layouts.items()))


def _loss_fn(setup: Setup, layouts_key: tuple):
    """``(frozen, trainable, batch) -> (loss, metrics)``: the model's weighted total loss."""
    return lambda frozen, trainable, batch: loss_lib.total_loss(
        frozen, trainable, batch, layouts_key, setup.model_cfg, task_weights(setup.config)
    )


def get_step(setup: Setup, layouts: dict):
    """The jitted step for these layouts (layouts are static: stage II has a few)."""
    layouts_key = _layouts_key(layouts)
    key = (setup.key, layouts_key)
    if key not in _STEPS:
        s = setup
        loss_fn = _loss_fn(setup, layouts_key)
        fn = step_lib.make_train_step(
            loss_fn,
            s.tx,
            s.lr_schedule,
            int(s.config.train.grad_accum),
            s.mesh,
            _augment(s),
            ema_lib.decay_of(s.config.optim),
        )
        _STEPS[key] = step_lib.compile_train_step(fn, s.mesh, s.state_shardings, s.frozen_shardings)
    return _STEPS[key]


def get_mismatched_loss(setup: Setup, layouts: dict, tasks: tuple[str, ...]):
    """The jitted reading probe (``reading.py``) of these tasks, with the step's loss."""
    layouts_key = _layouts_key(layouts)
    key = (setup.key, layouts_key, tasks)
    if key not in _PROBES:
        fn = reading.make_mismatched_loss(
            _loss_fn(setup, layouts_key), tasks, int(setup.config.train.grad_accum), setup.mesh
        )
        _PROBES[key] = jax.jit(fn)
    return _PROBES[key]


def _probe_reading(setup: Setup, step_now: int, frozen, trainable, arrays, layouts) -> dict:
    """``<task>/loss_mismatched`` of this batch when ``train.reading_every`` divides the
    step about to be taken (``reading.py``); else ``{}``."""
    every = int(setup.config.train.get("reading_every", 0) or 0)
    if not every or step_now % every:
        return {}
    tasks = tuple(reading.probed_tasks(arrays))
    if not tasks:
        return {}
    rolled = {t: reading.mismatched_rows(arrays[t], layouts[t]) for t in tasks}
    global_rolled = sharding.global_batch_from_local(rolled, setup.mesh, jax.process_count())
    fn = get_mismatched_loss(setup, layouts, tasks)
    return {k: float(v) for k, v in jax.device_get(fn(frozen, trainable, global_rolled)).items()}


def _cached_init(setup: Setup, name: Any, build):
    key = (setup.key, name)
    if key not in _INITS:
        _INITS[key] = build()
    return _INITS[key]


def split_layouts(batch: dict) -> tuple[dict, dict]:
    """``{task: {arrays..., "layout"}}`` → (arrays per task, layout per task)."""
    arrays = {t: {k: v for k, v in b.items() if k != "layout"} for t, b in batch.items()}
    layouts = {t: tuple(tuple(s) for s in b["layout"]) for t, b in batch.items()}
    return arrays, layouts


# ------------------------------------------------------------------------------ params


def load_frozen(setup: Setup) -> tuple[Any, dict]:
    """Frozen LLM on the mesh (bf16) and its identity."""
    return base_lib.load_frozen(setup.config.base, setup.model_cfg, setup.frozen_shardings)


def initial_trainable(setup: Setup, frozen: Any) -> Any:
    """Vision parts from the frozen text parts, then overwritten by ``base.init_from``."""
    shardings = setup.state_shardings["trainable"]
    seed = int(setup.config.train.seed)
    rows = base_lib.text_rows(setup.config.base)  # the base's real tokens (None: random base)
    init = _cached_init(
        setup,
        ("trainable", rows),
        lambda: jax.jit(
            lambda f, key: params_lib.init_trainable_from_frozen(
                setup.model_cfg, f, key, num_text_rows=rows
            ),
            out_shardings=shardings,
        ),
    )
    trainable = init(frozen, jax.random.fold_in(jax.random.key(seed), 1))
    if setup.config.base.init_from:
        # The weights the previous stage samples with: its moving average when it kept one.
        loaded, missing, _, _ = ckpt_lib.load_trainable_from(
            setup.config.base.init_from, setup.abstract_state["trainable"], shardings
        )
        if missing:
            log.warning("init_from: freshly initialised (not in previous stage): %s", missing)

        def merge(fresh, old):
            if isinstance(fresh, dict):
                return {k: merge(v, old[k]) if k in old else v for k, v in fresh.items()}
            return old

        trainable = merge(trainable, loaded)
    return trainable


# ------------------------------------------------------------------------------ run


class _Preemption:
    """SIGTERM sets a flag; the loop saves at the next step boundary and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def agreed(self) -> bool:
        """True on every process once any process has been asked to stop."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
        return bool(np.any(flags))

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def make_iterator(config: ml_collections.ConfigDict):

    return pipeline.make_train_iterator(
        config.data,
        int(config.train.global_batch),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        codebook_size=int(config.model.codebook_size),
        hires_order_k=int(config.model.nktp_k),
    )


def _tokens_in(arrays: dict) -> int:
    return int(sum(np.prod(b["tokens"].shape) for b in arrays.values()))


def check_config_change(workdir: str, config_json: str, allow: bool, report) -> None:
    """Compare with the config the workdir's checkpoints were trained with (``config.json``).

    Every difference is reported on one line; changes of the stage, the model, the batch or
    the data stream (``validate.REFUSED_CHANGES``) are refused unless ``allow``.
    """
    root = workdir_lib.resolve(workdir)
    previous = root / "config.json"
    steps, _ = integrity.step_dirs(ckpt_lib.checkpoint_dir(workdir))
    if not steps or not previous.exists():
        return
    try:
        old = json.loads(previous.read_text())
    except ValueError:
        report(f"warning: {previous} is unreadable; config changes on resume not checked")
        return
    refused, harmless = validate.config_changes(old, json.loads(config_json))
    for line in harmless:
        report(f"config changed on resume: {line}")
    if refused and not allow:
        raise ConfigChangeError(
            [f"config change on resume refused: {line}" for line in refused]
            + [
                f"{workdir} was trained with another stage, model, batch or data; use a new "
                "workdir, or --allow_config_change to resume anyway"
            ]
        )
    for line in refused:
        report(f"config changed on resume (allowed): {line}")


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    devices: list[jax.Device] | None = None,
    iterator: Any = None,
    allow_config_change: bool = False,
) -> dict:
    """Train (or resume) in ``workdir``; returns last step, final metrics, state and frozen.

    ``iterator`` replaces the configured data pipeline (tests inject faulty batches); it must
    yield per-process batches and may offer ``get_state``/``set_state`` for exact resume.
    """
    setup = prepare(config, devices)
    config = setup.config
    is_main = jax.process_index() == 0
    report = print if is_main else (lambda *a, **k: None)
    check_config_change(workdir, setup.config_json, allow_config_change, report)
    if is_main:
        root = workdir_lib.resolve(workdir)
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.json").write_text(json.dumps(json.loads(setup.config_json), indent=2))
        run_info.write(workdir, config)
    iterator = make_iterator(config) if iterator is None else iterator

    with jax.set_mesh(setup.mesh):
        frozen, base_identity = load_frozen(setup)
        manager = ckpt_lib.make_manager(
            workdir,
            config.checkpoint.every_steps,
            config.checkpoint.keep,
            config.checkpoint.async_save,
        )
        sealer = integrity.Sealer(
            enabled=is_main and bool(config.checkpoint.get("checksums", True))
        )
        try:
            # The newest checkpoint that passes verification; damaged ones are set aside.
            latest, state = ckpt_lib.restore_intact(
                manager,
                setup.abstract_state,
                setup.state_shardings,
                iterator,
                base_identity,
                str(config.checkpoint.get("on_damage", "fallback")),
                lambda line: report(f"warning: {line}"),
                workdir,
            )
            if latest is not None:
                if is_main:
                    print(f"resuming from the checkpoint of step {latest} in {workdir}")
            else:
                trainable = initial_trainable(setup, frozen)
                init = _cached_init(
                    setup,
                    "state",
                    lambda: state_lib.jit_init_state(setup.tx, setup.state_shardings),
                )
                state = init(trainable)
            start = int(jax.device_get(state["step"]))
            summary = _loop(
                setup, workdir, manager, state, frozen, iterator, base_identity, start, sealer
            )
            summary["frozen"] = frozen
        finally:
            # In-flight saves are of finite states: let them land even when the run fails,
            # and write their file checksums.
            sealer.close(manager)
            manager.wait_until_finished()
            manager.close()
    return summary


def _loop(setup, workdir, manager, state, frozen, iterator, base_identity, start, sealer) -> dict:
    config = setup.config
    is_main = jax.process_index() == 0
    writer = metrics.MetricsWriter(workdir, setup.num_steps, start, enabled=is_main)
    previewer = preview.Previewer(config, setup.model_cfg)
    preemption = _Preemption()
    config_dict = json.loads(setup.config_json)
    device = jax.devices()[0]
    peak = float(config.train.peak_flops_per_device) or (
        metrics.peak_flops_per_device(device.device_kind, device.platform, jax.local_device_count())
    )
    log_every = max(1, int(config.train.log_every))
    last = {}
    finished_reason = "num_steps"
    step = start
    last_saved = manager.latest_step()

    state_finite = True  # the state restored or initialised is finite (checked by the step)
    real_data = not config.data.synthetic
    max_skips = int(config.train.max_consecutive_skips)
    skips, first_bad = 0, None  # consecutive skipped updates and where the streak began

    # The newest checkpoint saved outside a streak of skipped updates.
    last_good_saved = last_saved

    def last_good() -> str:
        if last_good_saved is None:
            return "none (no checkpoint yet)"
        return f"step {last_good_saved}"

    def save(step_now: int, force: bool) -> None:
        nonlocal last_saved, last_good_saved
        sealer.ready(manager)
        if last_saved == step_now:
            return
        if not state_finite:
            writer.print(f"step {step_now}: state is not finite; checkpoint NOT written")
            if force:
                raise NonFiniteError(
                    f"step {step_now}: the final checkpoint was refused (the state is not "
                    f"finite); last good checkpoint: {last_good()}"
                )
            return
        if force or manager.should_save(step_now):
            sealer.drain()  # the previous seal is written before Orbax may delete old steps
        if ckpt_lib.save(manager, step_now, state, iterator, config_dict, base_identity, force):
            last_saved = step_now
            if not skips:
                last_good_saved = step_now
            sealer.submit(ckpt_lib.checkpoint_dir(workdir) / str(step_now))

    try:
        while step < setup.num_steps:
            try:
                local = next(iterator)
            except StopIteration:
                finished_reason = "data exhausted"
                break
            arrays, layouts = split_layouts(local)
            global_arrays = sharding.global_batch_from_local(
                arrays, setup.mesh, jax.process_count()
            )
            # Before the step: it donates the parameters the probe reads.
            probe = _probe_reading(setup, step + 1, frozen, state["trainable"], arrays, layouts)
            t0 = time.perf_counter()
            state, out = get_step(setup, layouts)(state, frozen, global_arrays)
            out = jax.device_get(out)
            dt = time.perf_counter() - t0
            if real_data:  # records skipped by data.on_bad_record='skip' (this process)
                out["data/bad_records"] = pipeline.bad_record_count()
            step += 1
            if probe:
                out.update(probe, **reading.gaps(probe, out))
            state_finite = bool(out["state_finite"])
            tokens = _tokens_in(arrays) * jax.process_count()
            if not state_finite:
                _write(writer, step, out, dt, tokens, None)
                raise NonFiniteError(
                    f"step {step}: the train state (params or optimizer state) is not finite; "
                    f"stopped, nothing saved; last good checkpoint: {last_good()}"
                )
            if not bool(out["finite"]):
                skips += 1
                first_bad = step if skips == 1 else first_bad
                message = (
                    f"step {step}: non-finite loss ({float(out['loss'])}) or gradient norm "
                    f"({float(out['grad_norm'])}); "
                )
                if config.train.nonfinite == "stop":
                    writer.print(message + "stopping (train.nonfinite='stop')")
                    _write(writer, step, out, dt, tokens, None)
                    raise NonFiniteError(
                        message + f"stopped (train.nonfinite='stop'); last good checkpoint: "
                        f"{last_good()}"
                    )
                writer.print(message + "update skipped (train.nonfinite='skip')")
                if max_skips and skips > max_skips:
                    _write(writer, step, out, dt, tokens, None)
                    raise NonFiniteError(
                        f"steps {first_bad}-{step}: {skips} consecutive updates skipped "
                        f"(non-finite loss or gradients; train.max_consecutive_skips="
                        f"{max_skips}); first bad step {first_bad}; last good checkpoint: "
                        f"{last_good()}"
                    )
            else:
                skips, first_bad = 0, None
            logged = step % log_every == 0 or step == setup.num_steps or bool(probe)
            if logged or not bool(out["finite"]):
                flops = metrics.flops_per_step(
                    setup.model_cfg,
                    layouts,
                    {t: a["tokens"].shape[0] * jax.process_count() for t, a in arrays.items()},
                )
                mfu = flops / (dt * jax.device_count() * peak) if peak else None
                last = _write(writer, step, out, dt, tokens, mfu)
            writer.advance()
            if previewer.due(step, setup.num_steps):
                sheet = previewer(step, frozen, sampled_weights(state), writer)
                if sheet:
                    writer.print(f"step {step}: samples of config.sample.prompts in {sheet}")
            save(step, force=False)
            if preemption.agreed():
                writer.print(f"step {step}: SIGTERM received; saving a checkpoint and exiting")
                finished_reason = "preempted"
                break
        save(step, force=True)
    finally:
        preemption.restore()
        writer.close()
    return {"step": step, "metrics": last, "reason": finished_reason, "state": state}


def _write(writer, step, out, dt, tokens, mfu) -> dict:
    record = {k: float(np.asarray(v)) for k, v in out.items() if np.ndim(v) == 0}
    record.update(step_time_s=dt, tokens_per_s=tokens / dt if dt > 0 else 0.0)
    if mfu is not None:
        record["mfu"] = mfu
    writer.write(step, record)
    return record


def abstract_batch(setup: Setup) -> tuple[dict, dict]:
    """One synthetic batch's shapes as sharded ``ShapeDtypeStruct``s, and its layouts."""

    data = ml_collections.ConfigDict(setup.config.data.to_dict())
    data.synthetic = True
    model = setup.model_cfg
    it = pipeline.make_synthetic_iterator(
        data, int(setup.config.train.global_batch),
        codebook_size=model.codebook_size, hires_order_k=model.nktp_k,
    )  # fmt: skip
    arrays, layouts = split_layouts(next(it))
    batch_sharding = sharding.batch_sharding(setup.mesh)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, jnp.asarray(x).dtype, sharding=batch_sharding),
        arrays,
    )
    return abstract, layouts


def compile_step(setup: Setup):
    """Lower and compile the real step against abstract inputs (nothing is allocated)."""
    batch, layouts = abstract_batch(setup)
    with jax.set_mesh(setup.mesh):
        state = ckpt_lib.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
        frozen = ckpt_lib.abstract_with_shardings(setup.abstract_frozen, setup.frozen_shardings)
        step = get_step(setup, layouts)
        return step.lower(state, frozen, batch).compile(), layouts
