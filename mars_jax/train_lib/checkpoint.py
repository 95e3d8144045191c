"""Orbax checkpoints of a training run.

One checkpoint step directory holds these items:

- ``state``: trainable params (fp32), optimizer state, ``step``, ``skipped``, RNG;
- ``data``: the Grain iterator state (Grain's own Orbax handler, one JSON file per process);
- ``config``: the resolved config (JSON), for reading a run back;
- ``base``: identity of the frozen LLM (where it came from + a content hash); the frozen
  weights themselves are never re-saved, and a resume checks the hash;
- ``integrity``: the sha256 of the data-iterator state; after the commit, process 0 adds
  ``_FILE_CHECKSUMS.json`` (every file's sha256). Both are verified before a resume
  (``integrity.py``); a damaged checkpoint is set aside and the previous one used.

Saves are asynchronous (``CheckpointManager`` with ``save_interval_steps`` and
``max_to_keep``); Orbax commits a step directory atomically, so ``latest_step`` is always a
complete checkpoint. The workdir may be a ``gs://`` URL (``workdir.resolve``). Restoring takes abstract arrays carrying the *current* mesh's
shardings, so a run can resume on a different mesh shape.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import grain.checkpoint as grain_ckpt
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from mars_jax.train_lib import integrity
from mars_jax.train_lib import workdir as workdir_lib
from mars_jax.train_lib.ema import EMA_KEY

CHECKPOINT_DIR = "checkpoints"

log = logging.getLogger(__name__)


class BaseMismatchError(RuntimeError):
    """The frozen LLM of this run is not the one the checkpoint was trained on."""


def checkpoint_dir(workdir: str) -> epath.Path:
    """``<workdir>/checkpoints``; a ``gs://`` workdir stays a URL, which Orbax accepts."""
    return workdir_lib.resolve(workdir) / CHECKPOINT_DIR


def make_manager(
    workdir: str, every_steps: int, keep: int, async_save: bool
) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, int(every_steps)),
        max_to_keep=int(keep) if keep and keep > 0 else None,
        enable_async_checkpointing=bool(async_save),
        create=True,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def _has_state(iterator: Any) -> bool:
    return (
        iterator is not None and hasattr(iterator, "get_state") and hasattr(iterator, "set_state")
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: dict,
    iterator: Any,
    config_dict: dict,
    base_identity: dict,
    force: bool = False,
) -> bool:
    """Save ``state`` at ``step`` if the interval says so (or ``force``); True if it did."""
    if not force and not manager.should_save(step):
        return False
    data_iterator = iterator if _has_state(iterator) else None
    items = {
        "state": ocp.args.StandardSave(state),
        "config": ocp.args.JsonSave(config_dict),
        "base": ocp.args.JsonSave(base_identity),
        integrity.ITEM: ocp.args.JsonSave(integrity.integrity_record(data_iterator)),
    }
    if _has_state(iterator):
        items["data"] = grain_ckpt.CheckpointSave(iterator)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )


def read_base_identity(manager: ocp.CheckpointManager, step: int) -> dict:
    return dict(manager.restore(step, args=ocp.args.Composite(base=ocp.args.JsonRestore())).base)


def check_base(saved: dict, current: dict, where: str) -> None:
    if saved.get("hash") != current.get("hash"):
        raise BaseMismatchError(
            f"{where}: the checkpoint was trained on base {saved.get('source')!r} "
            f"(hash {saved.get('hash')}), but this run loaded {current.get('source')!r} "
            f"(hash {current.get('hash')}); point base.checkpoint at the original base "
            "or start a new workdir"
        )


def restore(
    manager: ocp.CheckpointManager,
    step: int,
    abstract_state: dict,
    state_shardings: dict,
    iterator: Any,
) -> dict:
    """Restore the state onto ``state_shardings`` and the iterator in place; returns the state.

    A checkpoint of an earlier version also holds an unused ``rng``: it is read and dropped.
    A moving average of the weights (``"ema"``) the checkpoint lacks starts at the restored
    weights; one it holds that this run does not keep is read and dropped.
    """
    target = abstract_with_shardings(abstract_state, state_shardings)
    saved = _saved_state_keys(epath.Path(manager.directory) / str(step))
    if "rng" in saved and "rng" not in target:
        rep = jax.sharding.NamedSharding(jax.tree.leaves(state_shardings)[0].mesh, P())
        target = {**target, "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)}
    # `optim.ema_decay` switched on at a resume: the average starts at the restored weights;
    # switched off: the saved average is read and dropped (it stays in the old checkpoints).
    start_ema = EMA_KEY in target and EMA_KEY not in saved
    if start_ema:
        target = {k: v for k, v in target.items() if k != EMA_KEY}
    if EMA_KEY in saved and EMA_KEY not in target:
        target = {**target, EMA_KEY: target["trainable"]}
    items = {"state": ocp.args.StandardRestore(target)}
    if _has_state(iterator):
        items["data"] = grain_ckpt.CheckpointRestore(iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    state = dict(restored.state)
    state.pop("rng", None)
    if EMA_KEY not in abstract_state:
        state.pop(EMA_KEY, None)
    if start_ema:
        log.warning("step %d: no moving average saved; it starts at the restored weights", step)
        state[EMA_KEY] = jax.tree.map(jnp.copy, state["trainable"])
    return state


def load_trainable_from(
    workdir: str,
    abstract_trainable: Any,
    shardings: Any,
    step: int | None = None,
    flag: str = "base.init_from",
    weights: str = "sampled",
) -> LoadedTrainable:
    """Trainable params of a run's checkpoint ``step`` (default: its last), e.g. a previous
    stage's (``base.init_from``); ``flag`` names the setting in error messages.

    ``weights``: "trained" (the optimizer's weights), "ema" (their moving average, an error
    when the run kept none) or "sampled" (the average when kept, else the trained weights:
    what the run's samples and evaluations use).

    Leaves present in both trees are restored onto ``shardings``; returns the restored leaves
    (a nested dict), the paths that the previous stage did not have (``missing``, e.g. stage
    III's new next-K heads), the step read and which weights ("trained" or "ema").
    """
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{flag}={workdir!r}: no checkpoints at {directory} (train the previous "
            "stage first, or fix the path)"
        )
    steps = ocp.utils.checkpoint_steps(directory)
    if not steps:
        raise FileNotFoundError(f"{flag}={workdir!r}: {directory} holds no checkpoint")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"{flag}={workdir!r}: no step {step} (steps: {sorted(steps)})")
    candidates = [step] if step is not None else sorted(steps, reverse=True)
    step = None
    for candidate in candidates:  # the newest intact one (integrity.py)
        problem, _ = integrity.check_step(directory / str(candidate), expect_data=False)
        if problem is None:
            step = candidate
            break
        log.warning("%s: %s; trying an earlier checkpoint", flag, problem.line(candidate))
    if step is None:
        raise integrity.CheckpointDamagedError(
            f"{flag}={workdir!r}: no intact checkpoint among {sorted(candidates)} in {directory} "
            f"(`python -m mars_jax.train --verify_checkpoint={workdir}` lists why)"
        )
    state_dir = directory / str(step) / "state"
    meta = _saved_state_tree(state_dir)
    if "trainable" not in meta:
        raise FileNotFoundError(f"{flag}={workdir!r}: step {step} has no trainable params")
    key = subtree_of(weights, EMA_KEY in meta, f"{flag}={workdir!r} step {step}")
    saved_tree = meta[key]

    def intersect(target, saved, path=""):
        if isinstance(target, dict):
            out, missing = {}, set()
            for key, sub in target.items():
                if isinstance(saved, dict) and key in saved:
                    o, m = intersect(sub, saved[key], f"{path}/{key}")
                    if o is not None:
                        out[key] = o
                    missing |= m
                else:
                    missing.add(f"{path}/{key}")
            return out, missing
        if tuple(getattr(saved, "shape", ())) != tuple(target.shape):
            raise ValueError(
                f"{flag}={workdir!r}: trainable {path} has shape "
                f"{tuple(getattr(saved, 'shape', ()))} there but {tuple(target.shape)} here"
            )
        return target, set()

    target, missing = intersect(abstract_trainable, saved_tree)

    def pick(shard_tree, tree):
        if isinstance(tree, dict):
            return {k: pick(shard_tree[k], v) for k, v in tree.items()}
        return shard_tree

    sharded_target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        target,
        pick(shardings, target),
    )
    item = {key: sharded_target}
    restored = ocp.PyTreeCheckpointer().restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item=item,
            restore_args=jax.tree.map(
                lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), item
            ),
            partial_restore=True,
        ),
    )
    return LoadedTrainable(restored[key], missing, step, "ema" if key == EMA_KEY else "trained")


class LoadedTrainable(NamedTuple):
    """What `load_trainable_from` read."""

    trainable: Any
    missing: set
    step: int
    weights: str  # "trained" or "ema"


WEIGHTS = ("trained", "ema", "sampled")


def _saved_state_keys(step_dir: epath.Path) -> set[str]:
    """The top-level keys of a checkpoint's saved state (from its metadata, no array read).
    (`CheckpointManager.item_metadata` knows them only once the manager restored an item;
    the handler, unlike a `Checkpointer`, does not look for a step-level metadata file in the
    item's folder and warn that it is missing.)"""
    return set(_saved_state_tree(step_dir / "state").keys())


def _saved_state_tree(state_dir: epath.Path) -> Any:
    """The saved state's tree metadata (shapes and dtypes, no array read)."""
    return ocp.PyTreeCheckpointHandler().metadata(state_dir)


def subtree_of(weights: str, has_ema: bool, where: str) -> str:
    """The state key that holds ``weights`` (see `load_trainable_from`)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: expected one of {WEIGHTS}")
    if weights == "ema" and not has_ema:
        raise ValueError(f"{where}: kept no moving average of its weights (optim.ema_decay=0)")
    return EMA_KEY if weights != "trained" and has_ema else "trainable"


def restore_intact(
    manager,
    abstract_state: dict,
    state_shardings: dict,
    iterator: Any,
    base_identity: dict,
    on_damage: str,
    report,
    where: str,
) -> tuple[int | None, dict | None]:
    """Restore the newest checkpoint that passes verification; ``(None, None)`` if none exist.

    Each damaged one is reported (``report(line)``) and set aside as
    ``<step>.damaged-<reason>``; ``on_damage='stop'`` raises at the first one instead (and
    renames nothing). Raises ``integrity.CheckpointDamagedError`` when checkpoints exist but none is
    intact, and ``checkpoint.BaseMismatchError`` (not damage) for another frozen LLM.
    """
    directory = epath.Path(manager.directory)
    has_data = _has_state(iterator)
    pi, pc = jax.process_index(), jax.process_count()
    damaged: list[str] = []
    for step in sorted(manager.all_steps(), reverse=True):
        step_dir = directory / str(step)
        problem, _ = integrity.check_step(step_dir, has_data, pi, pc)
        state = None
        if problem is None:
            try:
                saved = read_base_identity(manager, step)
            except Exception as e:  # any read failure is damage
                problem = integrity.Problem("base", "unreadable", integrity.one_line(e))
            else:
                check_base(saved, base_identity, f"{where} step {step}")
        if problem is None:
            try:
                state = restore(manager, step, abstract_state, state_shardings, None)
            except Exception as e:
                problem = integrity.Problem("state", "unreadable", integrity.one_line(e))
        if problem is None and has_data:
            try:
                manager.restore(
                    step, args=ocp.args.Composite(data=grain_ckpt.CheckpointRestore(iterator))
                )
            except Exception as e:
                problem = integrity.Problem("data", "unreadable", integrity.one_line(e))
        if problem is None and not integrity.state_is_finite(state):
            problem = integrity.Problem(
                "state", "nonfinite", "the restored params or optimizer state hold NaN/Inf"
            )
        problem = integrity.agree(problem)
        if problem is None:
            return step, state
        line = problem.line(step)
        if on_damage == "stop":
            raise integrity.CheckpointDamagedError(
                f"{line} (checkpoint.on_damage='stop': nothing renamed; "
                f"`python -m mars_jax.train --verify_checkpoint={directory.parent}` lists all)"
            )
        aside = directory / f"{step}{integrity.DAMAGED_TAG}{problem.reason}"
        if pi == 0:
            aside = integrity.set_aside(step_dir, problem.reason)
        if pc > 1:
            multihost_utils.sync_global_devices(f"mars_jax set aside {step}")
        report(f"{line}; set aside as {aside.name}; trying the previous checkpoint")
        damaged.append(f"{step} ({problem.reason})")
        manager.reload()
    if damaged:
        raise integrity.CheckpointDamagedError(
            f"no intact checkpoint in {directory}: every one is damaged ({', '.join(damaged)}; "
            "set aside, nothing deleted); start a new workdir or repair one"
        )
    return None, None
