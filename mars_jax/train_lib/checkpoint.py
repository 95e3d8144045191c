"""Orbax checkpoints of a training run.

One checkpoint step directory holds these items:

- ``state``: trainable params (fp32), optimizer state, ``step``, ``skipped``, RNG;
- ``data``: the Grain iterator state (Grain's own Orbax handler, one JSON file per process);
- ``config``: the resolved config (JSON), for reading a run back;
- ``base``: identity of the frozen LLM (where it came from + a content hash); the frozen
  weights themselves are never re-saved, and a resume checks the hash.

Saves are asynchronous (``CheckpointManager`` with ``save_interval_steps`` and
``max_to_keep``); Orbax commits a step directory atomically, so ``latest_step`` is always a
complete checkpoint. The workdir may be a ``gs://`` URL (``workdir.resolve``). Restoring takes abstract arrays carrying the *current* mesh's
shardings, so a run can resume on a different mesh shape.
"""

from __future__ import annotations

from typing import Any

import grain.checkpoint as grain_ckpt
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import PartitionSpec as P

from mars_jax.train_lib import workdir as workdir_lib

CHECKPOINT_DIR = "checkpoints"


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
    items = {
        "state": ocp.args.StandardSave(state),
        "config": ocp.args.JsonSave(config_dict),
        "base": ocp.args.JsonSave(base_identity),
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
    """
    target = abstract_with_shardings(abstract_state, state_shardings)
    saved = manager.item_metadata(step).state
    if saved is not None and "rng" in saved and "rng" not in target:
        rep = jax.sharding.NamedSharding(jax.tree.leaves(state_shardings)[0].mesh, P())
        target = {**target, "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)}
    items = {"state": ocp.args.StandardRestore(target)}
    if _has_state(iterator):
        items["data"] = grain_ckpt.CheckpointRestore(iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    state = dict(restored.state)
    state.pop("rng", None)
    return state


def load_trainable_from(workdir: str, abstract_trainable: Any, shardings: Any) -> tuple[Any, set]:
    """Final trainable params of a previous stage's run (``base.init_from``).

    Leaves present in both trees are restored onto ``shardings``; returns ``(tree, missing)``
    where ``tree`` holds only the restored leaves (a nested dict) and ``missing`` the paths
    that the previous stage did not have (e.g. stage III's new next-K heads).
    """
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"base.init_from={workdir!r}: no checkpoints at {directory} (train the previous "
            "stage first, or fix the path)"
        )
    steps = ocp.utils.checkpoint_steps(directory)
    if not steps:
        raise FileNotFoundError(f"base.init_from={workdir!r}: {directory} holds no checkpoint")
    step = max(steps)
    state_dir = directory / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    meta = checkpointer.metadata(state_dir).item_metadata
    if "trainable" not in meta:
        raise FileNotFoundError(f"base.init_from={workdir!r}: step {step} has no trainable params")
    saved_tree = meta["trainable"]

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
                f"base.init_from={workdir!r}: trainable {path} has shape "
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
    item = {"trainable": sharded_target}
    restored = checkpointer.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item=item,
            restore_args=jax.tree.map(
                lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), item
            ),
            partial_restore=True,
        ),
    )
    return restored["trainable"], missing
