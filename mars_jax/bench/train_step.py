"""Train-step throughput: ``python -m mars_jax.bench.train_step --config=configs/stage1.py:tiny``.

Times the real jitted step of a preset on synthetic batches with a random frozen LLM (no base
checkpoint needed) on whatever devices JAX sees, and prints tokens/s and MFU. The FLOPs
formula is ``mars_jax.train_lib.metrics.flops_per_sequence``; the peak per device comes from
``metrics.PEAK_FLOPS_BY_KIND`` (on CPU: a nominal 50 GFLOP/s per core, so the CPU figure is a
sanity check only). The last line is ``mfu=<x>``.
"""

import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mars_jax.train_lib import loop, metrics, sharding
from mars_jax.train_lib import state as state_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/stageN.py:<preset>", lock_config=False)
flags.DEFINE_integer("steps", 5, "timed steps")
flags.DEFINE_integer("warmup", 2, "untimed steps (the first one compiles)")


def main(argv):
    del argv
    config = FLAGS.config
    config.base.checkpoint = ""
    config.base.init_from = ""
    config.base.demo_lm = False
    config.data.synthetic = True
    config.train.num_steps = max(int(config.train.num_steps), FLAGS.warmup + FLAGS.steps)
    setup = loop.prepare(config)
    iterator = loop.make_iterator(setup.config)
    with jax.set_mesh(setup.mesh):
        frozen, _ = loop.load_frozen(setup)
        trainable = loop.initial_trainable(setup, frozen)
        state = state_lib.jit_init_state(setup.tx, setup.state_shardings)(trainable)
        del trainable
        batches = []
        for _ in range(FLAGS.warmup + FLAGS.steps):
            arrays, layouts = loop.split_layouts(next(iterator))
            batches.append(
                (sharding.global_batch_from_local(arrays, setup.mesh, jax.process_count()), layouts)
            )
        for batch, layouts in batches[: FLAGS.warmup]:
            state, out = loop.get_step(setup, layouts)(state, frozen, batch)
        jax.block_until_ready(state)
        flops = tokens = 0.0
        start = time.perf_counter()
        for batch, layouts in batches[FLAGS.warmup :]:
            state, out = loop.get_step(setup, layouts)(state, frozen, batch)
            rows = {t: int(a["tokens"].shape[0]) for t, a in batch.items()}
            flops += metrics.flops_per_step(setup.model_cfg, layouts, rows)
            tokens += sum(int(np.prod(a["tokens"].shape)) for a in batch.values())
        jax.block_until_ready(state)
        seconds = time.perf_counter() - start
    device = jax.devices()[0]
    peak = float(setup.config.train.peak_flops_per_device) or (
        metrics.peak_flops_per_device(device.device_kind, device.platform, jax.local_device_count())
    )
    print(f"devices={jax.device_count()} kind={device.device_kind} mesh={dict(setup.mesh.shape)}")
    print(f"loss={float(out['loss']):.4f} step_time_s={seconds / FLAGS.steps:.4f}")
    print(f"tokens_per_s={tokens / seconds:.1f}")
    print(f"model_tflops_per_s={flops / seconds / 1e12:.4f}")
    mfu = flops / seconds / (jax.device_count() * peak) if peak else float("nan")
    print(f"mfu={mfu:.4f}")


if __name__ == "__main__":
    app.run(main)
