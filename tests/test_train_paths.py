"""Trainer paths and start-up: remote workdirs, multi-process arguments, epoch step counts, logs.

GCS is not reachable here, so ``gs://`` is tested through the functions that build paths, and
the upload of logs through a second local directory standing in for the remote workdir. One
real CLI run (relative workdir, real ArrayRecord shards, ``train.num_steps=0``) checks the
rest end to end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from etils import epath

from configs import stage2
from mars_jax.data import pipeline, precomputed
from mars_jax.train_lib import checkpoint as ckpt_lib
from mars_jax.train_lib import distributed, loop, metrics
from mars_jax.train_lib import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------ paths


@pytest.mark.parametrize("url", ["gs://bucket/runs/stage1", "s3://b/r", "gs://bucket/run/"])
def test_urls_are_never_made_local(url):
    path = workdir_lib.resolve(url)
    assert workdir_lib.is_remote(url)
    assert os.fspath(path) == url.rstrip("/")
    assert os.fspath(ckpt_lib.checkpoint_dir(url)) == url.rstrip("/") + "/checkpoints"
    dirs = workdir_lib.log_dirs(url, local_root="/tmp/logs")
    assert os.fspath(dirs.remote) == url.rstrip("/")
    scheme, rest = url.split("://")
    assert os.fspath(dirs.local) == os.path.join("/tmp/logs", scheme, *rest.strip("/").split("/"))


def test_local_paths_are_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not workdir_lib.is_remote("runs/a") and not workdir_lib.is_remote("/abs/gs:/x")
    assert os.fspath(workdir_lib.resolve("runs/a")) == str(tmp_path / "runs" / "a")
    assert os.fspath(ckpt_lib.checkpoint_dir("runs/a")) == str(tmp_path / "runs/a/checkpoints")
    dirs = workdir_lib.log_dirs("runs/a")
    assert dirs.remote is None and os.fspath(dirs.local) == str(tmp_path / "runs" / "a")
    with pytest.raises(ValueError, match="workdir"):
        workdir_lib.resolve("")


def test_remote_logs_are_fetched_written_locally_and_uploaded(tmp_path):
    remote = epath.Path(tmp_path / "remote")  # stands in for gs://bucket/run
    remote.mkdir()
    (remote / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")
    dirs = workdir_lib.LogDirs(local=epath.Path(tmp_path / "local"), remote=remote)
    writer = metrics.MetricsWriter("unused", 3, 1, enabled=True, dirs=dirs, upload_every_s=1e9)
    writer.write(2, {"loss": 2.0})
    assert len((remote / "metrics.jsonl").read_text().splitlines()) == 1  # not uploaded yet
    writer.upload()
    assert len((remote / "metrics.jsonl").read_text().splitlines()) == 2
    writer.write(3, {"loss": 1.0})
    writer.close()
    lines = [json.loads(x) for x in (remote / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    events = os.listdir(remote / "tensorboard")
    assert events and all(e.startswith("events.out.tfevents") for e in events)
    local_events = tmp_path / "local" / "tensorboard" / events[0]
    assert (remote / "tensorboard" / events[0]).read_bytes() == local_events.read_bytes()


# ------------------------------------------------------------------------------ multi-process

ENV_ALL = {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}


@pytest.mark.parametrize(
    "flags, env, want",
    [
        ((None, None, None, False), {}, None),
        ((None, None, None, False), ENV_ALL, ("h0:1234", 4, 2)),
        (("f:1", 2, 1, False), ENV_ALL, ("f:1", 2, 1)),  # flags win
        (("f:1", None, None, False), ENV_ALL, ("f:1", 4, 2)),  # mixed sources
        (("f:1", 2, 0, False), {}, ("f:1", 2, 0)),
        ((None, None, -1, False), {}, None),  # the flag's "not given"
    ],
)
def test_multiprocess_arguments_from_flags_then_environment(flags, env, want):
    got = distributed.resolve_args(*flags, environ=env)
    if want is None:
        assert got is None
    else:
        assert got == dict(
            zip(("coordinator_address", "num_processes", "process_id"), want, strict=True)
        )


def test_auto_detection_takes_what_is_given():
    assert distributed.resolve_args(None, None, None, True, environ={}) == {}
    env = {"JAX_NUM_PROCESSES": "8"}
    assert distributed.resolve_args(None, None, None, True, environ=env) == {"num_processes": 8}


@pytest.mark.parametrize(
    "flags, env, message",
    [
        ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1"}, "--num_processes / JAX_NUM_"),
        (("h:1", 2, None), {}, "not --process_id / JAX_PROCESS_ID"),
        ((None, None, None), {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDI"),
        ((None, None, None), dict(ENV_ALL, JAX_PROCESS_ID="two"), "JAX_PROCESS_ID='two'"),
        (("h:1", 2, 2), {}, r"process id 2 is not in \[0, 2\)"),
        (("h:1", None, 0), {"JAX_NUM_PROCESSES": "0"}, "must be >= 1"),
    ],
)
def test_incomplete_or_bad_multiprocess_arguments_fail_clearly(flags, env, message):
    with pytest.raises(ValueError, match=message):
        distributed.resolve_args(*flags, auto=False, environ=env)


# ------------------------------------------------------------------------------ CLI run

CODEBOOK = 16
BIG, SMALL, BATCH = 20, 5, 8  # 2 full batches of 2x2 grids; the 2x3 bucket is too small


def _write_shards(out: str) -> None:
    rng = np.random.default_rng(0)
    grids = [(2, 2)] * BIG + [(2, 3)] * SMALL
    examples = [
        {"key": f"r{i}", "text_ids": [7, 8, 9], "codes": rng.integers(0, CODEBOOK, g)}
        for i, g in enumerate(grids)
    ]
    precomputed.write_precomputed_shards(out, examples, 2, CODEBOOK, shard_size=8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("shards"))
    _write_shards(out)
    return out


def _shards_config(shards: str, **train):
    c = stage2.get_config("tiny")
    c.data.update(synthetic=False, shards=shards, num_epochs=1, task_batch_multiple=8)
    c.train.update(global_batch=BATCH, num_steps=0, **train)
    return c


def test_a_joined_job_shuts_down_on_error_and_a_single_process_starts_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(distributed.jax.distributed, "shutdown", lambda: calls.append("down"))
    with pytest.raises(RuntimeError, match="disagree"):
        with distributed.joined("localhost:1234", 2, 1) as started:
            assert started and calls == [
                {"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1}
            ]
            raise RuntimeError("processes disagree on the config")
    assert calls[-1] == "down"  # left in order although the block raised
    calls.clear()
    for name in (
        distributed.ENV_COORDINATOR,
        distributed.ENV_NUM_PROCESSES,
        distributed.ENV_PROCESS_ID,
    ):
        monkeypatch.delenv(name, raising=False)
    with distributed.joined() as started:
        assert not started
    assert calls == []  # one process: neither started nor shut down


def test_epoch_steps_count_the_batches_the_iterator_yields(shards):
    c = _shards_config(shards)
    c.data.num_epochs = 2
    assert loop.epoch_steps(c, 1) == 2 * BIG // BATCH == len(list(loop.make_iterator(c)))
    c.train.global_batch = 32  # more than any bucket holds
    with pytest.raises(ValueError, match="yields no full batch of train.global_batch=32"):
        loop.epoch_steps(c, 1)
    c.data.shards = os.path.join(shards, "missing")
    with pytest.raises(FileNotFoundError, match="missing/manifest.json"):
        loop.epoch_steps(c, 1)
    c.data.num_examples = 64  # paper presets: no shards here, the size is in the config
    assert loop.epoch_steps(c, 1) == 2 * 64 // 32


def test_cli_epoch_steps_relative_workdir_and_quiet_logs(shards, tmp_path):
    expected = pipeline.num_batches(_shards_config(shards).data, BATCH)
    assert expected == BIG // BATCH == 2
    assert -(-(BIG + SMALL) // BATCH) > expected  # what counting the manifest's records gave

    cmd = [
        sys.executable, "-m", "mars_jax.train", "--config=" + os.path.join(REPO, "configs/stage2.py:tiny"),
        "--workdir=run", "--config.model.image_logits=vision_only",
        "--config.data.synthetic=False", f"--config.data.shards={shards}",
        "--config.data.num_epochs=1", f"--config.train.global_batch={BATCH}",
        "--config.train.num_steps=0", "--config.checkpoint.every_steps=1",
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"finished at step {expected} (num_steps)" in result.stdout
    info_lines = [x for x in output.splitlines() if re.match(r"I\d{4} \d\d:\d\d", x)]
    assert not info_lines, info_lines[:5]

    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["train"]["num_steps"] == expected
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, expected + 1))
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(run / "tensorboard"))
    assert str(expected) in os.listdir(run / ckpt_lib.CHECKPOINT_DIR)


def test_data_vq_larger_than_model_codebook_fails_before_compiling(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"schema_version": 1, "codebook_size": 1024}))
    c = stage2.get_config("tiny")
    c.data.synthetic = False
    c.data.shards = str(shards)
    c.model.codebook_size = 512
    with pytest.raises(ValueError, match=r"shards' VQ has 1024 codes.*model.codebook_size=512"):
        loop.prepare(c)
