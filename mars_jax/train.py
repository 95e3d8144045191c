"""Trainer CLI: ``python -m mars_jax.train --config=configs/stage1.py:<preset> --workdir=<dir>``.

Overrides: ``--config.optim.peak_lr=3e-4 --config.train.num_steps=100`` (ml_collections).
Running the same command again resumes from the latest complete checkpoint in ``workdir``.
Logging is at WARNING (Orbax's per-save INFO lines hidden) unless ``--verbosity=0`` is given.

Compile-only memory check (nothing allocated, emulated CPU devices)::

    python -m mars_jax.train --config=configs/stage1.py:qwen7b --compile_only --num_devices=64

lowers and compiles the real step against abstract arrays once per image bucket the stage's
data can produce (`train_lib/buckets.py`) and prints a table ``bucket | GiB/device |
micro-batches``; the last line is ``per_device_gib=<x>``, the largest. A bucket that needs
more than ``train.device_memory_gib`` (80) is an error naming it and the micro-batch count
estimated to fit. ``--num_devices`` must be known before JAX starts,
so this module reads it from ``sys.argv`` before importing JAX.

Multi-process (one process per host; see ``mars_jax/train_lib/distributed.py``)::

    python -m mars_jax.train ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0
    python -m mars_jax.train ... --coordinator_address=host0:1234 --num_processes=2 --process_id=1

or the variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``
(all three; read by ``distributed.py``), or ``--distributed`` for JAX's cluster
auto-detection (SLURM, Cloud TPU, GKE). Every process runs the same command with the same
config (checked by hash) and the same shared ``workdir`` (a shared file system or ``gs://``,
see ``train_lib/workdir.py``); each loads its own slice of the global batch, Orbax writes
checkpoints cooperatively, and only process 0 writes logs, metrics and TensorBoard events.
"""

import os
import sys


def _early_num_devices(argv: list[str]) -> int | None:
    """``--num_devices`` from the command line, read before JAX is imported."""
    for i, arg in enumerate(argv):
        if arg.startswith("--num_devices="):
            return int(arg.split("=", 1)[1])
        if arg == "--num_devices" and i + 1 < len(argv):
            return int(argv[i + 1])
    return None


def _set_host_device_count(n: int) -> None:
    flags = [
        f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f
    ]
    flags.append(f"--xla_force_host_platform_device_count={n}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    os.environ["JAX_PLATFORMS"] = "cpu"


if __name__ == "__main__" and "jax" not in sys.modules:
    _n = _early_num_devices(sys.argv)
    if _n:
        _set_host_device_count(_n)

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mars_jax.train_lib import distributed  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/stageN.py:<preset>", lock_config=False)
flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics.jsonl, tensorboard/")
flags.DEFINE_bool("compile_only", False, "lower + compile the step on abstract arrays and exit")
flags.DEFINE_integer("num_devices", None, "emulated CPU devices (compile_only; read pre-import)")
flags.DEFINE_string("coordinator_address", None, "multi-process: coordinator host:port")
flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
flags.DEFINE_integer("process_id", None, "multi-process: this process's id")
flags.DEFINE_bool("distributed", False, "multi-process: auto-detect the cluster (SLURM, TPU)")


def _step_gib(compiled) -> tuple[float, float]:
    """`(total, fixed)` GiB/device of a compiled step: arguments + outputs - aliased +
    temporaries, and the arguments alone (parameters, optimizer state, batch)."""
    mem = compiled.memory_analysis()
    gib = 1024**3
    total = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    return total / gib, mem.argument_size_in_bytes / gib


def compile_only(config) -> float:
    """Compile the configured step once per bucket the stage's data can produce
    (`train_lib/buckets.py`) on the current devices; print a table `bucket | GiB/device |
    micro-batches`; return the largest GiB/device. A bucket above `train.device_memory_gib`
    is an error naming it and the micro-batch count estimated to fit."""
    import dataclasses  # noqa: PLC0415

    import ml_collections  # noqa: PLC0415

    from mars_jax.train_lib import buckets, loop, sharding  # noqa: PLC0415

    setup = loop.prepare(config, check_paths=False)
    print(
        f"mesh {dict(setup.mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} devices"
    )
    limit = float(config.train.get("device_memory_gib", 80.0))
    accum = int(config.train.grad_accum)
    per_device = int(config.train.global_batch) // sharding.batch_shards(setup.mesh)
    rows, seen = [], {}
    for bucket in buckets.stage_buckets(setup.config.data):
        if bucket.tokens in seen:  # the transpose of a compiled bucket: same shapes
            rows.append((bucket, *seen[bucket.tokens], True))
            continue
        data = ml_collections.ConfigDict(setup.config.data.to_dict())
        data.grids = (bucket.grid,)
        if bucket.hires is not None:
            data.hires_grids = (bucket.hires,)
        cfg = ml_collections.ConfigDict(setup.config.to_dict())
        cfg.data = data
        compiled, layouts = loop.compile_step(dataclasses.replace(setup, config=cfg))
        seen[bucket.tokens] = _step_gib(compiled)
        print(
            f"{bucket.name}: layouts {layouts}: {seen[bucket.tokens][0]:.2f} GiB/device", flush=True
        )
        rows.append((bucket, *seen[bucket.tokens], False))
    print(f"\nbucket | GiB/device | micro-batches   (limit {limit:g} GiB, {per_device}/device)")
    errors = []
    for bucket, gib, fixed, same in rows:
        note = " (= transpose)" if same else ""
        if gib > limit * buckets.HEADROOM:
            note += f" over the {limit * buckets.HEADROOM:g} GiB headroom target"
        print(f"{bucket.name} | {gib:.2f} | {accum}{note}")
        if gib > limit:
            fit = buckets.micro_batches_that_fit(gib, fixed, accum, per_device, limit)
            errors.append(
                f"bucket {bucket.name} needs {gib:.1f} GiB/device > train.device_memory_gib="
                f"{limit:g} with train.grad_accum={accum}; "
                + (
                    f"about {fit} micro-batches would fit (--config.train.grad_accum={fit})"
                    if fit
                    else f"no micro-batch count fits ({per_device} sequences/device)"
                )
            )
    worst = max(gib for _, gib, _, _ in rows)
    print(f"per_device_gib={worst:.3f}")
    if errors:
        raise SystemExit("compile_only: " + "; ".join(errors))
    return worst


def quiet_logging_by_default() -> None:
    """absl logs at WARNING unless ``--verbosity`` (``-v``) is given.

    ``app.run`` sets absl's verbosity to INFO, and Orbax and Grain log each checkpoint save at
    INFO (hundreds of lines between progress-bar updates). The trainer's own messages go
    through the progress bar and stdout, so they stay.
    """
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def main(argv):
    del argv
    if FLAGS.config is None:
        raise app.UsageError("--config=configs/stageN.py:<preset> is required")
    quiet_logging_by_default()
    distributed.initialize(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed
    )
    if FLAGS.compile_only:
        compile_only(FLAGS.config)
        return
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    from mars_jax.train_lib import loop  # noqa: PLC0415

    config = FLAGS.config
    if config.data.get("demo_scenes", 0) and not config.data.get("synthetic", False):
        from mars_jax.demo.shards import ensure_demo_shards  # noqa: PLC0415

        if jax.process_index() == 0:  # the demo runs on one host
            ensure_demo_shards(
                config.data.shards,
                int(config.stage),
                int(config.data.demo_scenes),
                vq_dir=config.data.get("demo_vq", ""),
                kind_mix=config.data.get("demo_kind_mix", None),
            )
    summary = loop.run(config, FLAGS.workdir)
    if jax.process_index() == 0:
        print(f"finished at step {summary['step']} ({summary['reason']})")


if __name__ == "__main__":
    app.run(main)
