"""The sharded trainer end to end on 8 emulated CPU devices (tiny preset, synthetic batches).

One reference run (mesh (8,1,1), 4 steps) is shared by the tests; the other runs reuse its
compiled functions where the mesh allows. Losses on other meshes agree within rtol 2e-3
(bf16 compute, different reduction orders); resumed runs on the same mesh agree exactly.
The last section tests the moving average of the weights (`optim.ema_decay`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from self_kill import self_killing_train_cmd

from configs import stage2
from mars_jax import runs
from mars_jax.demo import shards as demo_shards
from mars_jax.model import mars
from mars_jax.tokens import vocab
from mars_jax.train_lib import checkpoint as ckpt_lib
from mars_jax.train_lib import ema, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 4
MESH_RTOL = 2e-3
# Same as `tiny_config()` below, as command-line overrides for the subprocess runs.
CLI_OVERRIDES = [
    "--config.model.image_logits=vision_only",
    "--config.train.global_batch=8",
    f"--config.train.num_steps={NUM_STEPS}",
    "--config.checkpoint.every_steps=1",
    "--config.checkpoint.keep=10",
]


def tiny_config(**mesh):
    c = stage2.get_config("tiny")
    c.model.image_logits = "vision_only"  # no 151,936-way text head: keeps the tests fast
    c.train.global_batch = 8
    c.train.num_steps = NUM_STEPS
    c.checkpoint.every_steps = 1
    c.checkpoint.keep = 10
    if "shape" in mesh:
        c.mesh.shape = mesh["shape"]
    return c


def read_losses(workdir) -> dict[int, float]:
    """Per-step loss from metrics.jsonl; a step written twice (resumed run) keeps the last."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            out[record["step"]] = record["loss"]
    return out


def restore_raw(workdir, step) -> dict:
    manager = ocp.CheckpointManager(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR))
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    manager.close()
    return state


def saved_steps(workdir) -> list[int]:
    manager = ocp.CheckpointManager(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR))
    steps = sorted(manager.all_steps())
    manager.close()
    return steps


def assert_trees_equal(a, b):
    flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class FaultyIterator:
    """Wraps the real pipeline; at chosen (1-based) steps poisons ``loss_mask`` or sends SIGTERM."""

    def __init__(self, config, nan_at=(), sigterm_at=()):
        self.inner = loop.make_iterator(loop.prepare(config).config)
        self.nan_at, self.sigterm_at = set(nan_at), set(sigterm_at)
        self.count = 0

    def __next__(self):
        batch = next(self.inner)
        self.count += 1
        if self.count in self.nan_at:
            for task in batch.values():
                task["loss_mask"] = np.full_like(task["loss_mask"], np.nan)
        if self.count in self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    # Grain's Orbax handler stores a non-Grain iterator's state as bytes and restarts it.
    def get_state(self) -> bytes:
        return json.dumps(self.inner.get_state()).encode()

    def set_state(self, state: bytes):
        self.inner.set_state(json.loads(state))

    def start_prefetch(self):
        pass


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ref"))
    config = tiny_config()
    config.train.reading_every = 2  # the probe does not change the run (its losses are shared)
    summary = loop.run(config, workdir)
    return {"workdir": workdir, "summary": summary, "losses": read_losses(workdir)}


def test_reference_run_trains_and_writes_logs(ref):
    losses = ref["losses"]
    assert sorted(losses) == list(range(1, NUM_STEPS + 1))
    assert all(np.isfinite(v) for v in losses.values())
    assert losses[NUM_STEPS] < losses[1]  # it learns something even in 4 steps
    assert ref["summary"]["step"] == NUM_STEPS
    assert saved_steps(ref["workdir"])[-1] == NUM_STEPS
    records = [json.loads(line) for line in open(os.path.join(ref["workdir"], "metrics.jsonl"))]
    for key in ("t2i/loss", "grad_norm", "lr", "tokens_per_s", "step_time_s", "mfu"):
        assert key in records[-1], key
    events = os.listdir(os.path.join(ref["workdir"], "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)


def test_reading_probe_logs_the_loss_with_other_rows_captions(ref):
    """Every `train.reading_every` steps the log holds the t2i loss with each row's caption
    taken from another row, and the gap to the step's own loss; other steps hold neither."""
    records = [json.loads(line) for line in open(os.path.join(ref["workdir"], "metrics.jsonl"))]
    for r in records:
        assert ("t2i/reading_gap" in r) == (r["step"] % 2 == 0), r["step"]
        if r["step"] % 2 == 0:
            gap = r["t2i/loss_mismatched"] - r["t2i/loss"]
            np.testing.assert_allclose(r["t2i/reading_gap"], gap, rtol=1e-6)
            assert np.isfinite(r["t2i/loss_mismatched"]) and r["t2i/loss_mismatched"] > 0


def test_text_logits_after_training_equal_the_bases(ref):
    """The LLM stays frozen: for text-only input, the trained run's text logits are those of
    the base it started from (fresh frozen tree, fresh trainable init), bit for bit."""
    setup = loop.prepare(tiny_config())
    with jax.set_mesh(setup.mesh):
        fresh, identity = loop.load_frozen(setup)  # what the run started from
        initial = loop.initial_trainable(setup, fresh)
    trained = ref["summary"]["state"]["trainable"]
    assert not np.array_equal(
        np.asarray(trained["vision_head"]), np.asarray(initial["vision_head"])
    )  # it did train
    ids = np.random.default_rng(0).integers(0, 150_000, (2, 10))
    positions, valid = np.broadcast_to(np.arange(10), ids.shape), np.ones(ids.shape, bool)
    model_cfg = setup.model_cfg.replace(image_logits="full")

    @jax.jit  # one program for both calls (eager op-by-op runs may round differently)
    def text_logits(frozen, trainable):
        logits = mars.forward_logits(frozen, trainable, ids, positions, valid, None, model_cfg)
        return logits[..., : vocab.TEXT_VOCAB_SIZE]

    # Both on one device, so the two computations are the same program.
    after = jax.device_get((ref["summary"]["frozen"], trained))
    np.testing.assert_array_equal(
        text_logits(*after), text_logits(*jax.device_get((fresh, initial)))
    )
    base = ckpt_lib.read_base_identity(
        ocp.CheckpointManager(os.path.join(ref["workdir"], ckpt_lib.CHECKPOINT_DIR)), NUM_STEPS
    )
    assert base["hash"] == identity["hash"]


def test_optimizer_state_holds_trainable_leaves_only(ref):
    state = ref["summary"]["state"]
    trainable = state["trainable"]
    adam = [
        s
        for s in jax.tree.leaves(
            state["opt_state"], is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
        )
        if isinstance(s, optax.ScaleByAdamState)
    ]
    assert len(adam) == 1
    for moments in (adam[0].mu, adam[0].nu):
        assert jax.tree.structure(moments) == jax.tree.structure(trainable)
    arrays = [x for x in jax.tree.leaves(state["opt_state"]) if x.ndim > 0]
    assert len(arrays) == 2 * len(jax.tree.leaves(trainable))
    text_shapes = {(vocab.TEXT_VOCAB_SIZE, 64), (64, vocab.TEXT_VOCAB_SIZE)}
    assert not any(tuple(x.shape) in text_shapes for x in arrays)


def test_other_mesh_gives_same_losses(ref, tmp_path):
    summary = loop.run(tiny_config(shape=(2, 4, 1)), str(tmp_path))
    losses = read_losses(tmp_path)
    assert summary["step"] == NUM_STEPS
    for step, value in ref["losses"].items():
        np.testing.assert_allclose(losses[step], value, rtol=MESH_RTOL, err_msg=f"step {step}")


def test_resume_on_different_mesh_with_accumulation(ref, tmp_path):
    """Restart from the reference's step-2 checkpoint on mesh (2,2,2), 2 micro-batches."""
    workdir = str(tmp_path)
    shutil.copytree(
        os.path.join(ref["workdir"], ckpt_lib.CHECKPOINT_DIR),
        os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR),
    )
    for step in saved_steps(workdir):
        if step > 2:
            shutil.rmtree(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR, str(step)))
    config = tiny_config(shape=(2, 2, 2))
    config.train.grad_accum = 2
    config.train.reading_every = 2  # the probe over micro-batches
    summary = loop.run(config, workdir)
    losses = read_losses(workdir)
    assert sorted(losses) == [3, 4] and summary["step"] == NUM_STEPS
    for step in (3, 4):
        np.testing.assert_allclose(losses[step], ref["losses"][step], rtol=MESH_RTOL)
    probed = [json.loads(line) for line in open(os.path.join(ref["workdir"], "metrics.jsonl"))]
    resumed = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    np.testing.assert_allclose(
        resumed[-1]["t2i/loss_mismatched"], probed[-1]["t2i/loss_mismatched"], rtol=MESH_RTOL
    )


def test_sigterm_saves_and_resume_is_exact(ref, tmp_path):
    workdir = str(tmp_path)
    config = tiny_config()
    summary = loop.run(config, workdir, iterator=FaultyIterator(config, sigterm_at={2}))
    assert summary["reason"] == "preempted" and summary["step"] == 2
    assert saved_steps(workdir)[-1] == 2
    summary = loop.run(config, workdir)
    assert summary["step"] == NUM_STEPS
    assert read_losses(workdir) == ref["losses"]


def test_muon_run_resumes_exactly_on_a_sharded_mesh(tmp_path):
    """Muon's partitioned state (momentum of the layer matrices, AdamW moments of the rest)
    shards over fsdp, saves at a preemption and restores to the same losses."""
    config = tiny_config(shape=(2, 4, 1))
    config.optim.name = "muon"
    whole, parted = str(tmp_path / "whole"), str(tmp_path / "parted")
    loop.run(config, whole)
    summary = loop.run(config, parted, iterator=FaultyIterator(config, sigterm_at={2}))
    assert summary["reason"] == "preempted" and summary["step"] == 2
    summary = loop.run(config, parted)
    assert summary["step"] == NUM_STEPS
    assert read_losses(parted) == read_losses(whole)
    # Muon's state: one momentum per layer matrix (AdamW's two moments for every other leaf),
    # the moments sharded like their parameters.
    state = summary["state"]
    muon_states = [
        s
        for s in jax.tree.leaves(
            state["opt_state"], is_leaf=lambda x: isinstance(x, optax.contrib.MuonState)
        )
        if isinstance(s, optax.contrib.MuonState)
    ]
    assert len(muon_states) == 1
    momenta = jax.tree.leaves(muon_states[0].mu)
    matrices = [
        x
        for path, x in jax.tree_util.tree_flatten_with_path(state["trainable"])[0]
        if path[-1].key in ("q", "k", "v", "o", "gate", "up", "down")
    ]
    assert len(momenta) == len(matrices) > 0
    for momentum in momenta:
        twin = [x for x in matrices if x.shape == momentum.shape]
        assert any(x.sharding.is_equivalent_to(momentum.sharding, x.ndim) for x in twin)


def test_image_code_noise_changes_the_step_and_resumes_exactly(ref, tmp_path):
    """With `train.image_code_noise` the run differs from the reference run once its
    weights read the codes (its first two steps predict uniformly either way: a zero head,
    and a learning rate warming up from 0); a preempted run resumes to the same losses."""
    config = tiny_config()
    config.train.image_code_noise = 0.3
    whole, parted = str(tmp_path / "whole"), str(tmp_path / "parted")
    loop.run(config, whole)
    noisy = read_losses(whole)
    assert noisy[1] == ref["losses"][1]
    assert all(noisy[step] != ref["losses"][step] for step in range(3, NUM_STEPS + 1))
    summary = loop.run(config, parted, iterator=FaultyIterator(config, sigterm_at={2}))
    assert summary["reason"] == "preempted" and summary["step"] == 2
    loop.run(config, parted)
    assert read_losses(parted) == noisy


def test_nan_batch_is_skipped(tmp_path):
    workdir = str(tmp_path)
    config = tiny_config()
    config.train.nonfinite = "skip"
    summary = loop.run(config, workdir, iterator=FaultyIterator(config, nan_at={3}))
    assert summary["step"] == NUM_STEPS
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["finite"] for r in records] == [1.0, 1.0, 0.0, 1.0]
    assert np.isfinite(records[-1]["loss"])
    # Step 3 changed nothing but the counters.
    before, after = restore_raw(workdir, 2), restore_raw(workdir, 3)
    assert_trees_equal(before["trainable"], after["trainable"])
    assert_trees_equal(before["opt_state"], after["opt_state"])
    assert int(after["step"]) == 3 and int(after["skipped"]) == 1
    assert int(summary["state"]["skipped"]) == 1


def test_nan_batch_stops_when_configured(tmp_path):
    workdir = str(tmp_path)
    config = tiny_config()
    config.train.nonfinite = "stop"
    with pytest.raises(loop.NonFiniteError, match="step 3"):
        loop.run(config, workdir, iterator=FaultyIterator(config, nan_at={3}))
    assert saved_steps(workdir)[-1] == 2


def _no_compile(fn):
    compiled_before = len(loop._STEPS)
    fn()
    assert len(loop._STEPS) == compiled_before


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"mesh.shape": (3, -1, 1)}, ValueError, "does not fit 8 devices"),
        ({"mesh.shape": (2, 2, 1)}, ValueError, "needs 4 devices but 8 are available"),
        ({"train.global_batch": 12}, ValueError, "global_batch=12"),
        ({"train.grad_accum": 3}, ValueError, "grad_accum=3"),
        ({"base.checkpoint": "/nonexistent/qwen"}, FileNotFoundError, "/nonexistent/qwen"),
        ({"base.init_from": "/nonexistent/stage1"}, FileNotFoundError, "/nonexistent/stage1"),
        ({"model.image_pos_grid": (4, 3)}, ValueError, r"data.grids.*4x4 code grid"),
    ],
)
def test_bad_setup_fails_before_compiling(tmp_path, change, error, message):
    config = tiny_config()
    for key, value in change.items():
        section, name = key.split(".")
        config[section][name] = value

    def attempt():
        with pytest.raises(error, match=message):
            loop.run(config, str(tmp_path))

    _no_compile(attempt)
    assert not os.path.exists(os.path.join(tmp_path, ckpt_lib.CHECKPOINT_DIR))


def test_resume_with_other_base_is_refused(ref, tmp_path):
    workdir = str(tmp_path)
    shutil.copytree(
        os.path.join(ref["workdir"], ckpt_lib.CHECKPOINT_DIR),
        os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR),
    )
    config = tiny_config()
    config.base.seed = 1  # a different frozen LLM
    with pytest.raises(ckpt_lib.BaseMismatchError, match="random:0"):
        loop.run(config, workdir)


def test_random_base_is_kept_for_the_next_run_with_the_same_config_seed_and_mesh():
    """A process reuses its last random base (the suite's many short runs), and draws anew,
    to the same content, for another seed or mesh."""

    def load(seed=0, devices=None):
        config = tiny_config()
        config.base.seed = seed
        setup = loop.prepare(config, devices=devices)
        with jax.set_mesh(setup.mesh):
            return loop.load_frozen(setup)

    first, first_id = load()
    again, again_id = load()
    assert again is first and again_id == first_id and again_id is not first_id
    other, other_id = load(seed=1)
    assert other_id["source"] == "random:1" and other_id["hash"] != first_id["hash"]
    redrawn, redrawn_id = load()  # seed 1 took the place of seed 0: drawn again, equal
    assert redrawn is not first and redrawn_id == first_id
    assert_trees_equal(redrawn, first)
    four, four_id = load(devices=jax.devices()[:4])  # another mesh: other shardings
    assert four is not redrawn and four_id == first_id
    assert four["embed"].sharding != redrawn["embed"].sharding


def _initial_trainable_from(previous: str):
    """The trainable params a tiny run with `base.init_from=previous` starts from."""
    config = tiny_config()
    config.base.init_from = previous
    setup = loop.prepare(config)
    with jax.set_mesh(setup.mesh):
        frozen, _ = loop.load_frozen(setup)
        return loop.initial_trainable(setup, frozen)


def test_init_from_previous_stage_loads_final_trainable(ref):
    trainable = _initial_trainable_from(ref["workdir"])
    assert_trees_equal(trainable, ref["summary"]["state"]["trainable"])


def test_a_run_samples_without_the_stage_it_started_from(ref, tmp_path):
    """`runs.load_run` needs only the run's own checkpoint: the previous stage's workdir
    (`base.init_from`, often a relative path) may be gone or elsewhere."""
    previous = tmp_path / "stage1"
    shutil.copytree(ref["workdir"], previous)
    config = tiny_config()
    config.base.init_from = str(previous)
    config.train.num_steps = 1
    workdir = str(tmp_path / "stage2")
    summary = loop.run(config, workdir)
    shutil.rmtree(previous)
    run = runs.load_run(workdir, vq_dir=demo_shards.demo_vq_dir())
    assert run.step == 1
    assert_trees_equal(run.trainable, summary["state"]["trainable"])


def _train_cmd(workdir):
    return [
        sys.executable,
        "-m",
        "mars_jax.train",
        "--config=configs/stage2.py:tiny",
        f"--workdir={workdir}",
        *CLI_OVERRIDES,
    ]


def test_sigkill_mid_training_then_restart_gives_same_losses(ref, tmp_path):
    workdir = str(tmp_path / "run")
    # The restart reuses the executables the first process compiled (JAX's persistent cache).
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    )
    kill_step = 2
    killer = self_killing_train_cmd(_train_cmd(workdir)[3:], kill_step, settle=False)
    first = subprocess.run(
        killer,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert max(read_losses(workdir)) == kill_step
    result = subprocess.run(
        _train_cmd(workdir), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = re.search(r"resuming from the checkpoint of step (\d+)", result.stdout)
    assert resumed and 1 <= int(resumed.group(1)) <= kill_step, result.stdout[-3000:]
    assert read_losses(workdir) == ref["losses"]
    # The steps redone after the checkpoint replace their old lines: each step once.
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, NUM_STEPS + 1))


# ------------------------------------------------------------------------------ moving average
# `optim.ema_decay` (train_lib/ema.py): kept by the step from the applied updates, saved and
# resumed with the state, switched on or off at a resume without losing a checkpoint, and
# what runs sample with unless told otherwise. Each saved step's average is checked against
# the recurrence computed here from the saved weights.

DECAY = 0.2


def ema_config():
    config = tiny_config()
    config.optim.ema_decay = DECAY
    return config


def _keep_steps_up_to(workdir, last):
    for step in saved_steps(workdir):
        if step > last:
            shutil.rmtree(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR, str(step)))


@pytest.fixture(scope="module")
def ema_runs(ref, tmp_path_factory):
    """The reference run ("plain"), the same run keeping the average ("whole"), and that run
    resumed from its step-2 checkpoint ("parted")."""
    root = tmp_path_factory.mktemp("ema")
    whole, parted = str(root / "whole"), str(root / "parted")
    summary = loop.run(ema_config(), whole)
    shutil.copytree(whole, parted)
    _keep_steps_up_to(parted, 2)
    loop.run(ema_config(), parted)
    return {"plain": ref["workdir"], "whole": whole, "parted": parted, "summary": summary}


def test_ema_decay_warms_up_then_holds():
    got = [float(ema.decay_at(0.99, n)) for n in (0, 1, 10, 10_000)]
    np.testing.assert_allclose(got, [1 / 10, 2 / 11, 11 / 20, 0.99], rtol=1e-6)
    old, new = {"w": np.full(3, 2.0, np.float32)}, {"w": np.full(3, 4.0, np.float32)}
    updated = ema.update(old, new, 0.5, 100)  # decay 0.5: halfway
    np.testing.assert_allclose(updated["w"], 3.0)
    assert updated["w"].dtype == np.float32


def test_ema_follows_the_saved_weights_and_leaves_training_alone(ema_runs):
    whole = ema_runs["whole"]
    assert read_losses(whole) == read_losses(ema_runs["plain"])
    assert saved_steps(whole) == list(range(1, NUM_STEPS + 1))
    previous = restore_raw(whole, 1)
    assert ema.EMA_KEY not in restore_raw(ema_runs["plain"], 1)
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


def test_ema_resumes_exactly(ema_runs):
    assert read_losses(ema_runs["parted"]) == read_losses(ema_runs["whole"])
    assert_trees_equal(
        restore_raw(ema_runs["parted"], NUM_STEPS)["ema"],
        restore_raw(ema_runs["whole"], NUM_STEPS)["ema"],
    )


def test_ema_switched_on_or_off_at_a_resume_loses_no_checkpoint(ema_runs, tmp_path, capsys):
    # On: a run saved without the average resumes; the average starts at its weights.
    on = str(tmp_path / "on")
    shutil.copytree(ema_runs["plain"], on)
    _keep_steps_up_to(on, 2)
    loop.run(ema_config(), on)
    assert "optim.ema_decay: 0.0 -> 0.2" in capsys.readouterr().out
    assert saved_steps(on) == list(range(1, NUM_STEPS + 1))  # nothing set aside
    assert read_losses(on) == read_losses(ema_runs["plain"])
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
    shutil.copytree(ema_runs["whole"], off)
    shutil.rmtree(os.path.join(off, ckpt_lib.CHECKPOINT_DIR, str(NUM_STEPS)))
    loop.run(tiny_config(), off)
    assert saved_steps(off) == list(range(1, NUM_STEPS + 1))
    assert read_losses(off) == read_losses(ema_runs["plain"])
    assert ema.EMA_KEY not in restore_raw(off, NUM_STEPS)
    assert ema.EMA_KEY in restore_raw(off, NUM_STEPS - 1)


def test_ema_is_sampled_unless_told_otherwise(ema_runs):
    vq = demo_shards.demo_vq_dir()
    final = ema_runs["summary"]["state"]
    run = runs.load_run(ema_runs["whole"], vq_dir=vq)
    assert run.weights == "ema"
    assert_trees_equal(run.trainable, final["ema"])
    run = runs.load_run(ema_runs["whole"], vq_dir=vq, weights="trained")
    assert run.weights == "trained"
    assert_trees_equal(run.trainable, final["trainable"])
    plain = runs.load_run(ema_runs["plain"], vq_dir=vq)
    assert plain.weights == "trained"
    with pytest.raises(ValueError, match="kept no moving average"):
        runs.load_run(ema_runs["plain"], vq_dir=vq, weights="ema")
    # The next stage starts from the weights this one samples with.
    assert_trees_equal(_initial_trainable_from(ema_runs["whole"]), final["ema"])


def test_ema_bundle_holds_the_weights_it_was_exported_with(ema_runs, tmp_path):
    from mars_jax import export

    final = ema_runs["summary"]["state"]
    vq = demo_shards.demo_vq_dir()
    for weights, key in ((None, "ema"), ("trained", "trainable")):
        out = export.export(ema_runs["whole"], str(tmp_path / key), vq_dir=vq, weights=weights)
        bundle = runs.load_run(out)
        assert bundle.weights == ("ema" if key == "ema" else "trained")
        assert_trees_equal(bundle.trainable, final[key])
        assert "moving average" in open(os.path.join(out, "model_card.md")).read() or key != "ema"
    with pytest.raises(ValueError, match="a bundle"):
        runs.load_run(out, weights="ema")
