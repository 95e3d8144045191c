"""The moving average of the trained weights (`optim.ema_decay`, train_lib/ema.py): kept by
the step from the applied updates, saved and resumed with the state, switched on or off at
a resume without losing a checkpoint, and what runs sample with unless told otherwise.

Real tiny runs (8 emulated CPU devices, 4 steps, a checkpoint per step): the average of
every saved step is checked against the recurrence computed here from the saved weights.
"""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest
from test_train_loop import (
    NUM_STEPS,
    FaultyIterator,
    assert_trees_equal,
    read_losses,
    restore_raw,
    saved_steps,
    tiny_config,
)

from mars_jax import runs
from mars_jax.demo import shards as demo_shards
from mars_jax.train_lib import checkpoint as ckpt_lib
from mars_jax.train_lib import ema, loop

DECAY = 0.2


def ema_config():
    config = tiny_config()
    config.optim.ema_decay = DECAY
    return config


@pytest.fixture(scope="module")
def runs_dirs(tmp_path_factory):
    """A run without the average, the same run with it, and that run preempted at step 2."""
    root = tmp_path_factory.mktemp("ema")
    plain, whole, parted = (str(root / name) for name in ("plain", "whole", "parted"))
    loop.run(tiny_config(), plain)
    summary = loop.run(ema_config(), whole)
    preempted = loop.run(
        ema_config(), parted, iterator=FaultyIterator(ema_config(), sigterm_at={2})
    )
    assert preempted["reason"] == "preempted" and preempted["step"] == 2
    loop.run(ema_config(), parted)
    return {"plain": plain, "whole": whole, "parted": parted, "summary": summary}


def test_decay_warms_up_then_holds():
    got = [float(ema.decay_at(0.99, n)) for n in (0, 1, 10, 10_000)]
    np.testing.assert_allclose(got, [1 / 10, 2 / 11, 11 / 20, 0.99], rtol=1e-6)
    old, new = {"w": np.full(3, 2.0, np.float32)}, {"w": np.full(3, 4.0, np.float32)}
    updated = ema.update(old, new, 0.5, 100)  # decay 0.5: halfway
    np.testing.assert_allclose(updated["w"], 3.0)
    assert updated["w"].dtype == np.float32


def test_the_average_follows_the_saved_weights_and_leaves_training_alone(runs_dirs):
    whole = runs_dirs["whole"]
    assert read_losses(whole) == read_losses(runs_dirs["plain"])
    assert saved_steps(whole) == list(range(1, NUM_STEPS + 1))
    previous = restore_raw(whole, 1)
    assert ema.EMA_KEY not in restore_raw(runs_dirs["plain"], 1)
    for step in range(2, NUM_STEPS + 1):
        state = restore_raw(whole, step)
        d = min(DECAY, step / (9 + step))  # `step - 1` updates before this one
        expect = jax.tree.map(
            lambda e, t, d=d: d * np.asarray(e) + (1 - d) * np.asarray(t),
            previous["ema"],
            state["trainable"],
        )
        for got, want in zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(expect), strict=True):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
        previous = state
    last = restore_raw(whole, NUM_STEPS)
    gaps = [
        float(np.max(np.abs(np.asarray(e) - np.asarray(t))))
        for e, t in zip(
            jax.tree.leaves(last["ema"]), jax.tree.leaves(last["trainable"]), strict=True
        )
    ]
    assert max(gaps) > 0  # an average, not a copy


def test_a_preempted_run_resumes_to_the_same_average(runs_dirs):
    assert read_losses(runs_dirs["parted"]) == read_losses(runs_dirs["whole"])
    assert_trees_equal(
        restore_raw(runs_dirs["parted"], NUM_STEPS)["ema"],
        restore_raw(runs_dirs["whole"], NUM_STEPS)["ema"],
    )


def test_switched_on_or_off_at_a_resume_no_checkpoint_is_lost(runs_dirs, tmp_path, capsys):
    # On: a run saved without the average resumes; the average starts at its weights.
    on = str(tmp_path / "on")
    shutil.copytree(runs_dirs["plain"], on)
    for step in saved_steps(on):
        if step > 2:
            shutil.rmtree(os.path.join(on, ckpt_lib.CHECKPOINT_DIR, str(step)))
    loop.run(ema_config(), on)
    assert "optim.ema_decay: 0.0 -> 0.2" in capsys.readouterr().out
    assert saved_steps(on) == list(range(1, NUM_STEPS + 1))  # nothing set aside
    assert read_losses(on) == read_losses(runs_dirs["plain"])
    two, three = restore_raw(on, 2), restore_raw(on, 3)
    d = min(DECAY, 3 / 12)
    for e, w2, w3 in zip(
        *(jax.tree.leaves(t) for t in (three["ema"], two["trainable"], three["trainable"])),
        strict=True,
    ):
        np.testing.assert_allclose(
            np.asarray(e), d * np.asarray(w2) + (1 - d) * np.asarray(w3), rtol=1e-5, atol=1e-7
        )
    # Off: a run saved with it resumes without it; the earlier checkpoints keep theirs.
    off = str(tmp_path / "off")
    shutil.copytree(runs_dirs["whole"], off)
    shutil.rmtree(os.path.join(off, ckpt_lib.CHECKPOINT_DIR, str(NUM_STEPS)))
    loop.run(tiny_config(), off)
    assert saved_steps(off) == list(range(1, NUM_STEPS + 1))
    assert read_losses(off) == read_losses(runs_dirs["plain"])
    assert ema.EMA_KEY not in restore_raw(off, NUM_STEPS)
    assert ema.EMA_KEY in restore_raw(off, NUM_STEPS - 1)


def test_sampling_loads_the_average_unless_told_otherwise(runs_dirs):
    vq = demo_shards.demo_vq_dir()
    final = runs_dirs["summary"]["state"]
    run = runs.load_run(runs_dirs["whole"], vq_dir=vq)
    assert run.weights == "ema"
    assert_trees_equal(run.trainable, final["ema"])
    run = runs.load_run(runs_dirs["whole"], vq_dir=vq, weights="trained")
    assert run.weights == "trained"
    assert_trees_equal(run.trainable, final["trainable"])
    plain = runs.load_run(runs_dirs["plain"], vq_dir=vq)
    assert plain.weights == "trained"
    with pytest.raises(ValueError, match="kept no moving average"):
        runs.load_run(runs_dirs["plain"], vq_dir=vq, weights="ema")
    # The next stage starts from the weights this one samples with.
    config = tiny_config()
    config.base.init_from = runs_dirs["whole"]
    setup = loop.prepare(config)
    with jax.set_mesh(setup.mesh):
        frozen, _ = loop.load_frozen(setup)
        trainable = loop.initial_trainable(setup, frozen)
    assert_trees_equal(trainable, final["ema"])


def test_a_bundle_holds_the_weights_it_was_exported_with(runs_dirs, tmp_path):
    from mars_jax import export

    final = runs_dirs["summary"]["state"]
    vq = demo_shards.demo_vq_dir()
    for weights, key in ((None, "ema"), ("trained", "trainable")):
        out = export.export(runs_dirs["whole"], str(tmp_path / key), vq_dir=vq, weights=weights)
        bundle = runs.load_run(out)
        assert bundle.weights == ("ema" if key == "ema" else "trained")
        assert_trees_equal(bundle.trainable, final[key])
        assert "moving average" in open(os.path.join(out, "model_card.md")).read() or key != "ema"
    with pytest.raises(ValueError, match="a bundle"):
        runs.load_run(out, weights="ema")
