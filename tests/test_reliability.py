"""Reliability (docs/RELIABILITY.md): damaged checkpoints, non-finite runs, config errors,
config changes on resume, damaged shards, and metrics that stay monotone across restarts.

Real Orbax checkpoints of a real tiny run (8 emulated CPU devices, 4 steps, one checkpoint
per step) are damaged on disk in each way below; the resumed run must report one line, set
the checkpoint aside (nothing deleted) and reach the losses of an undamaged resume from the
previous checkpoint, which equal the reference run's (resume is bit-exact).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_train_loop import REPO, FaultyIterator, read_losses, tiny_config

from configs import stage2
from mars_jax.data import pipeline, prepare, records
from mars_jax.train_lib import checkpoint as ckpt_lib
from mars_jax.train_lib import integrity, loop, metrics, validate

NUM_STEPS = 4


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ref"))
    summary = loop.run(tiny_config(), workdir)
    return {"workdir": workdir, "summary": summary, "losses": read_losses(workdir)}


def _copy(ref, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(ref["workdir"], workdir)
    return workdir


def _step_dir(workdir, step) -> str:
    return os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR, str(step))


def _largest_data_file(step_dir) -> str:
    d = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
    return max((os.path.join(d, f) for f in os.listdir(d)), key=os.path.getsize)


def _garble(path, offset_frac=0.5, n=16):
    data = bytearray(open(path, "rb").read())
    at = int(len(data) * offset_frac)
    for i in range(at, min(at + n, len(data))):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _edit_iterator(step_dir):
    path = os.path.join(step_dir, "data", "process_0-of-1.json")
    text = open(path).read()
    state = json.loads(text)
    assert "next_index" in state, state
    old = state["next_index"]
    widest = int("9" * len(str(old)))  # same width: the file keeps its size
    state["next_index"] = widest if old != widest else old - 1
    open(path, "w").write(json.dumps(state, indent=4))


DAMAGES = {
    "garbled_array_file": (lambda s: _garble(_largest_data_file(s)), "state", "checksum"),
    "truncated_array_file": (lambda s: _truncate(_largest_data_file(s)), "state", "truncated"),
    "deleted_array_file": (lambda s: os.remove(_largest_data_file(s)), "state", "missing"),
    "deleted_state_metadata": (
        lambda s: os.remove(os.path.join(s, "state", "_METADATA")),
        "state",
        "missing",
    ),
    "deleted_state": (lambda s: shutil.rmtree(os.path.join(s, "state")), "state", "missing"),
    "deleted_base_metadata": (
        lambda s: os.remove(os.path.join(s, "base", "metadata")),
        "base",
        "missing",
    ),
    "deleted_iterator_file": (
        lambda s: os.remove(os.path.join(s, "data", "process_0-of-1.json")),
        "data",
        "missing",
    ),
    "edited_iterator_state": (_edit_iterator, "data", "checksum"),
    "garbled_state_metadata": (
        lambda s: _garble(os.path.join(s, "state", "_METADATA"), 0.3, 8),
        "state",
        "checksum",
    ),
    # Without the file checksums (a run killed between the commit and the seal): the
    # structural checks still catch these.
    "unsealed_edited_iterator_state": (_edit_iterator, "data", "data-state"),
    "unsealed_garbled_state_metadata": (
        lambda s: _garble(os.path.join(s, "state", "_METADATA"), 0.3, 8),
        "state",
        "unreadable",
    ),
    "unsealed_deleted_base_metadata": (
        lambda s: os.remove(os.path.join(s, "base", "metadata")),
        "base",
        "missing",
    ),
}


def _metrics_steps(workdir) -> list[int]:
    with open(os.path.join(workdir, metrics.METRICS_FILE)) as f:
        return [json.loads(line)["step"] for line in f]


def test_every_checkpoint_is_sealed(ref):
    for step in range(1, NUM_STEPS + 1):
        problem, sealed = integrity.check_step(
            integrity.epath.Path(_step_dir(ref["workdir"], step))
        )
        assert problem is None and sealed, step


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_damaged_checkpoint_falls_back_to_the_previous_one(ref, tmp_path, capsys, name):
    damage, part, reason = DAMAGES[name]
    workdir = _copy(ref, tmp_path)
    step_dir = _step_dir(workdir, NUM_STEPS)
    if name.startswith("unsealed_"):
        os.remove(os.path.join(step_dir, integrity.SEAL_FILE))
    damage(step_dir)
    files_before = sorted(
        os.path.relpath(os.path.join(d, f), step_dir) for d, _, fs in os.walk(step_dir) for f in fs
    )
    summary = loop.run(tiny_config(), workdir)
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if f"checkpoint step {NUM_STEPS}:" in x]
    assert len(lines) == 1, out
    assert f"checkpoint step {NUM_STEPS}: {part}: {reason}:" in lines[0], lines[0]
    assert f"resuming from the checkpoint of step {NUM_STEPS - 1}" in out
    aside = step_dir + f"{integrity.DAMAGED_TAG}{reason}"
    assert os.path.isdir(aside), os.listdir(os.path.dirname(step_dir))
    files_after = sorted(
        os.path.relpath(os.path.join(d, f), aside) for d, _, fs in os.walk(aside) for f in fs
    )
    assert files_after == files_before  # set aside, nothing deleted
    assert summary["step"] == NUM_STEPS
    assert read_losses(workdir) == ref["losses"]  # == an undamaged resume from step 3
    assert _metrics_steps(workdir) == list(range(1, NUM_STEPS + 1))  # each step once


def test_all_checkpoints_damaged_is_a_clear_error(ref, tmp_path):
    workdir = _copy(ref, tmp_path)
    for step in range(1, NUM_STEPS + 1):
        _garble(os.path.join(_step_dir(workdir, step), "state", "_METADATA"), 0.3, 8)
    with pytest.raises(integrity.CheckpointDamagedError, match="no intact checkpoint"):
        loop.run(tiny_config(), workdir)
    names = sorted(os.listdir(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR)))
    assert names == [f"{s}{integrity.DAMAGED_TAG}checksum" for s in range(1, NUM_STEPS + 1)]


def test_on_damage_stop_renames_nothing(ref, tmp_path):
    workdir = _copy(ref, tmp_path)
    _garble(_largest_data_file(_step_dir(workdir, NUM_STEPS)))
    config = tiny_config()
    config.checkpoint.on_damage = "stop"
    with pytest.raises(integrity.CheckpointDamagedError, match="step 4: state: checksum"):
        loop.run(config, workdir)
    assert os.path.isdir(_step_dir(workdir, NUM_STEPS))


def test_nonfinite_checkpoint_is_not_resumed(ref, tmp_path, capsys):
    """A checkpoint whose params are NaN (written behind the trainer's back) is damage."""
    workdir = _copy(ref, tmp_path)
    step_dir = _step_dir(workdir, NUM_STEPS)
    manager = ocp.CheckpointManager(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR))
    state = manager.restore(
        NUM_STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore())
    ).state
    manager.close()
    state = {k: jax.tree.map(np.array, v) for k, v in state.items()}  # writable copies
    leaf = state["trainable"]
    while isinstance(leaf, dict):
        leaf = leaf[sorted(leaf)[0]]
    leaf[...] = np.nan
    shutil.rmtree(os.path.join(step_dir, "state"))
    with ocp.StandardCheckpointer() as checkpointer:  # the save is async: wait for it
        checkpointer.save(os.path.join(step_dir, "state"), state)
    os.remove(os.path.join(step_dir, integrity.SEAL_FILE))
    summary = loop.run(tiny_config(), workdir)
    assert "state: nonfinite" in capsys.readouterr().out
    assert summary["step"] == NUM_STEPS and read_losses(workdir) == ref["losses"]


def test_too_many_consecutive_skips_stop_the_run(ref, tmp_path):
    config = tiny_config()
    config.train.max_consecutive_skips = 2
    with pytest.raises(
        loop.NonFiniteError, match=r"first bad step 2; last good checkpoint: step 1"
    ):
        loop.run(config, str(tmp_path), iterator=FaultyIterator(config, nan_at={2, 3, 4}))


def test_nonfinite_state_ends_the_run(ref, tmp_path, monkeypatch):
    """With train.nonfinite='skip' a NaN state used to skip every step and exit 'finished'."""
    real = loop.get_step

    def poisoned(setup, layouts):
        step = real(setup, layouts)

        def run_step(state, frozen, batch):
            state, out = step(state, frozen, batch)
            if int(state["step"]) == 2:  # as if the update had overflowed
                out = dict(out, state_finite=np.bool_(False))
            return state, out

        return run_step

    monkeypatch.setattr(loop, "get_step", poisoned)
    config = tiny_config()
    config.train.nonfinite = "skip"
    with pytest.raises(loop.NonFiniteError, match=r"step 2: the train state.*checkpoint: step 1"):
        loop.run(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / ckpt_lib.CHECKPOINT_DIR)) == ["1"]


def test_init_from_skips_a_damaged_last_checkpoint(ref, tmp_path):
    """A next stage starts from the previous run's newest *intact* checkpoint."""
    previous = _copy(ref, tmp_path)
    _garble(_largest_data_file(_step_dir(previous, NUM_STEPS)))
    config = tiny_config()
    config.base.init_from = previous
    setup = loop.prepare(config)
    with jax.set_mesh(setup.mesh):
        frozen, _ = loop.load_frozen(setup)
        trainable = loop.initial_trainable(setup, frozen)
    manager = ocp.CheckpointManager(os.path.join(previous, ckpt_lib.CHECKPOINT_DIR))
    want = manager.restore(
        NUM_STEPS - 1, args=ocp.args.Composite(state=ocp.args.StandardRestore())
    ).state["trainable"]
    manager.close()
    for a, b in zip(jax.tree.leaves(trainable), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_verify_checkpoint_cli(ref, tmp_path):
    workdir = _copy(ref, tmp_path)
    _edit_iterator(_step_dir(workdir, 2))
    cmd = [sys.executable, "-m", "mars_jax.train", f"--verify_checkpoint={workdir}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == NUM_STEPS, result.stdout
    assert lines[1].startswith("step 2: DAMAGED: data: checksum")
    assert all(" OK " in lines[i] for i in (0, 2, 3)), result.stdout
    one = cmd[:-1] + [f"--verify_checkpoint={_step_dir(workdir, 3)}"]
    result = subprocess.run(one, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("step 3: OK"), result.stdout


# ------------------------------------------------------------------------------ config


def test_config_change_on_resume(ref, tmp_path, capsys):
    workdir = _copy(ref, tmp_path)
    config = tiny_config()
    config.train.global_batch = 16
    config.model.num_layers = 3
    with pytest.raises(loop.ConfigChangeError) as info:
        loop.run(config, workdir)
    text = str(info.value)
    assert "model.num_layers: 2 -> 3" in text and "train.global_batch: 8 -> 16" in text
    assert len(os.listdir(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR))) == NUM_STEPS
    config = tiny_config()
    config.train.log_every = 2  # harmless: reported, resumed
    loop.run(config, workdir)
    assert "config changed on resume: train.log_every: 1 -> 2" in capsys.readouterr().out
    refused, harmless = validate.config_changes(
        {"train": {"num_steps": 4}, "data": {"shards": "a"}},
        {"train": {"num_steps": 8}, "data": {"shards": "b"}},
    )
    assert harmless == ["train.num_steps: 4 -> 8"] and refused == ["data.shards: 'a' -> 'b'"]
    # A run saved before `optim.name` existed trained with AdamW: resumes as such, and only
    # as such (the saved optimizer state is AdamW's).
    old = {"optim": {"peak_lr": 1e-3}}
    new = {
        "optim": {"peak_lr": 1e-3, "name": "adamw", "muon_groups": ["layers", "unfrozen_layers"]}
    }
    assert validate.config_changes(old, new) == ([], [])
    refused, _ = validate.config_changes(old, {"optim": {"peak_lr": 1e-3, "name": "muon"}})
    assert refused == ["optim.name: 'adamw' -> 'muon'"]
    # How the layers are compiled is not a model change; their shapes are.
    old = {"model": {"num_layers": 4}}
    assert validate.config_changes(old, {"model": {"num_layers": 4, "scan_unroll": 1}}) == ([], [])
    refused, harmless = validate.config_changes(
        old, {"model": {"num_layers": 4, "scan_unroll": 4, "loss_chunk_size": 512}}
    )
    assert refused == []
    assert harmless == ["model.loss_chunk_size: '<absent>' -> 512", "model.scan_unroll: 1 -> 4"]
    refused, _ = validate.config_changes(old, {"model": {"num_layers": 5}})
    assert refused == ["model.num_layers: 4 -> 5"]


BAD_VALUES = [
    ("optim.peak_lr", -1e-4, "must be > 0"),
    ("optim.peak_lr", float("nan"), "must be finite"),
    ("optim.warmup_ratio", 2.0, "must be in [0.0, 1.0]"),
    ("checkpoint.every_steps", -1, "must be >= 1"),
    ("train.global_batch", 0, "must be >= 1"),
    ("data.caption_ratio", 2.0, "must be in [0.0, 1.0]"),
    ("data.text_len", 0, "must be >= 1"),
    ("train.grad_accum", 0, "must be >= 1"),
    ("train.grad_accum", 3, "must divide train.global_batch=16"),
    ("train.nonfinite", "ignore", "must be one of"),
    ("model.num_layers", 0, "must be >= 1"),
    ("model.num_kv_heads", 3, "must divide model.num_heads=4"),
    ("mesh.shape", (2, 2, 1), "needs 4 devices but 8 are available"),
    ("mesh.shape", (8, 1), "must be 3 integers"),
    ("checkpoint.on_damage", "ignore", "must be one of"),
    ("data.on_bad_record", "maybe", "must be one of"),
    ("optim.unfrozen_lr_scale", -0.5, "must be >= 0"),
    ("optim.name", "sgd", "must be one of ('adamw', 'muon')"),
    ("optim.muon_groups", ("layers", "heads"), "must be a non-empty tuple from"),
    ("optim.muon_ns_steps", 0, "must be >= 1"),
    ("sample.candidates", 0, "must be >= 1"),
    ("sample.judge", "clip", "must be one of ('pixels', 'codes')"),
    ("sample.caption_candidates", -1, "must be >= 0"),
    ("sample.blank_std", -1.0, "must be >= 0"),
    ("sample.caption_candidates", 4, "needs data.caption_ratio > 0"),
    ("sample.candidates", 4, "needs data.caption_ratio > 0"),  # stage II trains no captions
    ("optim.muon_groups", (), "must be a non-empty tuple from"),
    ("train.reading_every", -1, "must be >= 0"),
]


@pytest.mark.parametrize("key, value, rule", BAD_VALUES)
def test_bad_config_value_is_one_line(key, value, rule):
    config = stage2.get_config("tiny")
    section, name = key.split(".")
    config[section][name] = value
    errors = validate.config_errors(config, num_devices=8)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{key}={value!r}: ") and rule in errors[0], errors[0]


def test_several_bad_values_reported_together(tmp_path):
    config = stage2.get_config("tiny")
    config.optim.peak_lr = -1.0
    config.data.text_len = 0
    config.train.nonfinite = "ignore"
    with pytest.raises(validate.ConfigError) as info:
        loop.run(config, str(tmp_path / "run"))
    assert len(info.value.lines) == 3
    assert not os.path.exists(tmp_path / "run")  # nothing written


def _cli(args, workdir):
    cmd = [sys.executable, "-m", "mars_jax.train", f"--workdir={workdir}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config=configs/stage2.py:tiny", "--config.optim.peak_rl=1"], "did you mean"),
        (["--config=configs/stage9.py:tiny"], "no such config file"),
        (["--config=configs/stage2.py:huge"], "unknown config preset 'huge'"),
        (["--config=configs/stage2.py:tiny", "--config.optim.peak_lr=nan"], "must be finite"),
        (["--config=configs/stage2.py:tiny", "--config.data.synthetic=False"], "data.shards"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(tmp_path, args, message):
    workdir = tmp_path / "run"
    result = _cli(args, workdir)
    assert result.returncode != 0
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not workdir.exists()


def test_cli_workdir_that_is_a_file_or_read_only(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    result = _cli(["--config=configs/stage2.py:tiny"], afile)
    assert result.returncode == 1 and "is a file" in result.stderr, result.stderr
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o500)
        result = _cli(["--config=configs/stage2.py:tiny"], ro / "run")
        assert result.returncode == 1 and "not writable" in result.stderr, result.stderr


def test_cli_all_damaged_exits_nonzero(ref, tmp_path):
    workdir = _copy(ref, tmp_path)
    for step in range(1, NUM_STEPS + 1):
        os.remove(os.path.join(_step_dir(workdir, step), "base", "metadata"))
    args = ["--config=configs/stage2.py:tiny", "--config.model.image_logits=vision_only"]
    args += ["--config.train.global_batch=8", f"--config.train.num_steps={NUM_STEPS}"]
    result = _cli(args, workdir)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: no intact checkpoint")


# ------------------------------------------------------------------------------ data


def _write_shards(out, n_files=3, per_file=16, grid=(4, 4)):
    """Real ArrayRecord shards of a stage-II data set, written with prepare's own writers."""
    rng = np.random.default_rng(0)
    for shard in range(n_files):
        recs = []
        for i in range(per_file):
            recs.append(
                records.encode_record(
                    {
                        "key": f"s{shard}-{i}",
                        "text_ids": rng.integers(0, 1000, 5),
                        "orig_hw": (16, 16),
                        "image_hw": (16, 16),
                        "codes": rng.integers(0, 64, grid),
                    }
                )
            )
        b = {"grid": list(grid), "lo_grid": None, "image_hw": [16, 16], "lo_image_hw": None}
        stats = {
            "counts": {"seen": per_file, "written": per_file, "skipped": 0},
            "filters": {},
            "skipped": [],
            "text_len_histogram": {"text": {5: per_file}, "refined_text": {}},
        }
        prepare.write_shard_outputs(str(out), shard, {"4x4": dict(b, records=recs)}, stats)
    prepare.finalize(str(out), n_files, {"stage": 2, "codebook_size": 64})
    return [os.path.join(out, "4x4", f"shard-{s:05d}.array_record") for s in range(n_files)]


def _shard_config(out, **data):
    c = stage2.get_config("tiny").data
    c.update(synthetic=False, shards=str(out), text_len=8, num_epochs=1, **data)
    return c


def _garble_record(path):
    """Flip bytes inside one record's chunk (the records sit at the start of the file)."""
    data = bytearray(open(path, "rb").read())
    at = data.find(b"-5")  # the key of the file's record 5
    assert at > 0
    for i in range(at, at + 8):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_garbled_record_is_skipped_and_counted(tmp_path):
    files = _write_shards(tmp_path)
    _garble_record(files[1])
    before = pipeline.bad_record_count()
    batches = list(pipeline.make_train_iterator(_shard_config(tmp_path), 8))
    assert len(batches) == pipeline.num_batches(_shard_config(tmp_path), 8)
    assert pipeline.bad_record_count() > before


def test_garbled_record_stops_when_configured(tmp_path):
    files = _write_shards(tmp_path)
    _garble_record(files[1])
    with pytest.raises(pipeline.BadRecordError, match=r"shard-00001.*on_bad_record='stop'"):
        list(pipeline.make_train_iterator(_shard_config(tmp_path, on_bad_record="stop"), 8))


def test_training_skips_garbled_records_and_counts_them(ref, tmp_path):
    """Real shards (the tiny model's layout), one garbled record per shard file: the run
    finishes and metrics.jsonl counts the skipped records."""
    for path in _write_shards(tmp_path / "shards"):
        _garble_record(path)
    config = tiny_config()
    config.data.update(_shard_config(tmp_path / "shards").to_dict())
    summary = loop.run(config, str(tmp_path / "run"))
    assert summary["step"] == NUM_STEPS
    with open(tmp_path / "run" / metrics.METRICS_FILE) as f:
        counts = [json.loads(line)["data/bad_records"] for line in f]
    assert counts == sorted(counts) and counts[-1] >= 1, counts


def test_truncated_or_missing_shard_and_manifest_at_startup(tmp_path):
    files = _write_shards(tmp_path)
    assert pipeline.shards_errors(str(tmp_path)) == []
    _truncate(files[0])
    os.remove(files[2])
    problems = pipeline.shards_errors(str(tmp_path))
    assert len(problems) == 2, problems
    assert "shard-00000" in problems[0] and "unreadable" in problems[0]
    assert "shard-00002" in problems[1] and "missing" in problems[1]
    config = tiny_config()
    config.data.update(_shard_config(tmp_path).to_dict())
    with pytest.raises(validate.ConfigError, match="shard-00002"):
        loop.prepare(config)
    manifest = tmp_path / pipeline.MANIFEST
    manifest.write_text(manifest.read_text()[:50])
    assert "truncated or not JSON" in pipeline.shards_errors(str(tmp_path))[0]
    cmd = [sys.executable, "-m", "mars_jax.data.verify", str(tmp_path)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.splitlines()) == 1


def test_metrics_truncated_after_the_resumed_step(tmp_path):
    path = tmp_path / metrics.METRICS_FILE
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)))
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # a line cut by a kill
    assert metrics.truncate_after(path, 3) == 3
    assert [json.loads(x)["step"] for x in open(path)] == [1, 2, 3]


def test_last_metrics_record_skips_a_line_cut_by_a_kill():
    lines = [json.dumps({"step": 4, "loss": 0.5}), "", '{"step": 5, "lo']
    assert metrics.last_record(lines) == {"step": 4, "loss": 0.5}
    assert metrics.last_record(['"not a record"', "[1]"]) == {}


def test_task_weights_are_checked_by_name_and_value():
    config = stage2.get_config("tiny")
    config.train.task_weights.caption = -1.0
    config.train.task_weights.captions = 2.0
    errors = validate.config_errors(config, num_devices=8)
    assert any(e.startswith("train.task_weights.caption=-1.0: ") for e in errors), errors
    assert any(
        e.startswith("train.task_weights.captions=2.0: ") and "one of" in e for e in errors
    ), errors
    assert len(errors) == 2, errors
