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

Errors a user can fix (bad config values, typos in ``--config.*`` keys, missing files or
shards, damaged checkpoints, a non-finite run) are printed as ``error: ...`` lines, without a
traceback, with exit status 1 (2 for command-line errors); see ``docs/RELIABILITY.md``.
``--verify_checkpoint=<workdir>[/checkpoints/<step>]`` lists every checkpoint as OK or
damaged (and why) without loading a model.
"""

import dataclasses
import importlib.util
import os
import re
import sys


def _early_num_devices(argv: list[str]) -> int | None:
    """``--num_devices`` from the command line, read before JAX is imported."""
    for i, arg in enumerate(argv):
        if arg.startswith("--num_devices="):
            return int(arg.split("=", 1)[1])
        if arg == "--num_devices" and i + 1 < len(argv):
            return int(argv[i + 1])
    return None


def xla_flags_with_host_devices(xla_flags: str, n: int | None) -> str:
    """``xla_flags`` with its emulated CPU device count set to ``n`` (removed when None)."""
    flags = [f for f in xla_flags.split() if "host_platform_device_count" not in f]
    if n is not None:
        flags.append(f"--xla_force_host_platform_device_count={n}")
    return " ".join(flags)


def _set_host_device_count(n: int) -> None:
    os.environ["XLA_FLAGS"] = xla_flags_with_host_devices(os.environ.get("XLA_FLAGS", ""), n)
    os.environ["JAX_PLATFORMS"] = "cpu"


def _resolve_config_path(argv: list[str]) -> None:
    """`--config=configs/stageN.py:preset` from any directory: a `configs/` path that does
    not exist here is taken from the installed `configs` package."""
    for i, arg in enumerate(argv):
        if not arg.startswith("--config="):
            continue
        path, sep, preset = arg.split("=", 1)[1].partition(":")
        if os.path.exists(path) or not path.startswith("configs/"):
            continue
        import configs

        installed = os.path.join(os.path.dirname(configs.__file__), path[len("configs/") :])
        if os.path.exists(installed):
            argv[i] = f"--config={installed}{sep}{preset}"


if __name__ == "__main__" and "jax" not in sys.modules:
    _n = _early_num_devices(sys.argv)
    if _n:
        _set_host_device_count(_n)
    _resolve_config_path(sys.argv)

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mars_jax.data import pipeline  # noqa: E402
from mars_jax.demo import shards as demo_shards  # noqa: E402
from mars_jax.train_lib import base as base_lib  # noqa: E402
from mars_jax.train_lib import buckets, distributed, integrity, loop, sharding, validate  # noqa: E402
from mars_jax.train_lib import checkpoint as ckpt_lib  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/stageN.py:<preset>", lock_config=False)
flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics.jsonl, tensorboard/")
flags.DEFINE_bool("compile_only", False, "lower + compile the step on abstract arrays and exit")
flags.DEFINE_integer("num_devices", None, "emulated CPU devices (compile_only; read pre-import)")
flags.DEFINE_string("coordinator_address", None, "multi-process: coordinator host:port")
flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
flags.DEFINE_integer("process_id", None, "multi-process: this process's id")
flags.DEFINE_bool("distributed", False, "multi-process: auto-detect the cluster (SLURM, TPU)")
flags.DEFINE_string(
    "verify_checkpoint", None, "<workdir>[/checkpoints/<step>]: list checkpoints OK/damaged, exit"
)
flags.DEFINE_bool(
    "allow_config_change", False, "resume even if the stage, model, batch or data changed"
)

# Set to 1 to see the traceback of an `error:` line.
TRACEBACK_ENV = "MARS_JAX_TRACEBACK"


def fail(lines: list[str], status: int = 1) -> None:
    """Print ``error: <line>`` for each line on stderr and exit with ``status``."""
    sys.stdout.flush()
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    sys.exit(status)


def _config_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _load_config_file(spec: str):
    """``configs/stageN.py:<preset>`` → its config, or one error line."""

    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        return None, f"--config={spec}: no such config file {path!r}"
    try:
        module_spec = importlib.util.spec_from_file_location("_mars_jax_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(*([arg] if arg else [])), None
    except Exception as e:  # a bad preset or a broken file: one line
        return None, f"--config={spec}: {' '.join(str(e).split())}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with every failure as one ``error:`` line (exit 2), no traceback."""
    spec = _config_arg(argv)
    config = None
    if spec:
        config, problem = _load_config_file(spec)
        if problem:
            fail([problem], 2)
    try:
        return FLAGS(argv)
    except Exception as e:  # flags.Error, AttributeError/KeyError for keys
        fail([_flag_error_line(argv, e, config)], 2)
    return []


def _flag_error_line(argv: list[str], e: Exception, config) -> str:

    text = " ".join(str(e).split())
    overrides = [a.split("=", 1)[0][2:] for a in argv if a.startswith("--config.")]
    if config is not None and isinstance(e, (AttributeError, KeyError)):
        keys = validate.flat_keys(config)
        for name in overrides:
            key = name[len("config.") :]
            if key not in keys:
                return f"--{name}: unknown config key{validate.did_you_mean(key, keys)}"
    match = re.search(r"flag (--config\.[\w.]+)=(\S*): (.*)", text)
    if match:
        return f"{match.group(1)}={match.group(2)}: {match.group(3)}"
    return text.removeprefix("FATAL Flags parsing error: ")


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
    setup = loop.prepare(config, check_paths=False)
    print(
        f"mesh {dict(setup.mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} devices"
    )
    limit = float(config.train.device_memory_gib)
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


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that reach the user as ``error:`` lines (a fixable cause, one message)."""

    return (
        ValueError,  # validate.ConfigError and the setup checks of loop.prepare
        OSError,  # missing files and paths
        ckpt_lib.BaseMismatchError,
        integrity.CheckpointDamagedError,
        loop.NonFiniteError,
        pipeline.BadRecordError,
    )


def _error_lines(e: BaseException) -> list[str]:
    lines = getattr(e, "lines", None)
    if lines:
        return list(lines)
    return [" ".join(str(e).split()) or type(e).__name__]


def main(argv):
    del argv
    if FLAGS.verify_checkpoint:
        lines, ok = integrity.verify_report(FLAGS.verify_checkpoint)
        for line in lines:
            print(line)
        sys.exit(0 if ok else 1)
    if FLAGS.config is None:
        fail(["--config=configs/stageN.py:<preset> is required"], 2)
    quiet_logging_by_default()
    if os.environ.get(TRACEBACK_ENV):
        return _main(FLAGS.config)
    try:
        return _main(FLAGS.config)
    except _user_errors() as e:
        fail(_error_lines(e))


def _main(config):
    with distributed.joined(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed
    ):
        _compile_or_train(config)


def _compile_or_train(config):
    if FLAGS.compile_only:
        validate.check(config, jax.device_count(), jax.process_count(), check_data=False)
        compile_only(config)
        return
    if not FLAGS.workdir:
        fail(["--workdir is required"], 2)
    # Everything that can be checked cheaply, before building data or writing anything.
    problems = validate.workdir_errors(FLAGS.workdir) + validate.config_errors(
        config, jax.device_count(), jax.process_count(), check_data=False
    )
    if problems:
        raise validate.ConfigError(problems)
    if jax.process_index() == 0:  # the demo runs on one host
        demo_shards.ensure_for_config(config)
        base_lib.ensure_demo_base(config.base)
    summary = loop.run(config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
    if jax.process_index() == 0:
        print(f"finished at step {summary['step']} ({summary['reason']})")


def _run_app() -> None:
    """`app.run(main)`; `--help` exits 0 (absl's exits 1)."""
    try:
        app.run(main, flags_parser=parse_flags)
    except SystemExit as e:
        if e.code == 1 and any(a in ("--help", "-h", "--helpshort") for a in sys.argv[1:]):
            raise SystemExit(0) from None
        raise


def run() -> None:
    """Console script `mars-train` (same flags as `python -m mars_jax.train`)."""
    n = _early_num_devices(sys.argv)
    if n:  # before any JAX backend starts
        _set_host_device_count(n)
    _resolve_config_path(sys.argv)
    _run_app()


if __name__ == "__main__":
    _run_app()
