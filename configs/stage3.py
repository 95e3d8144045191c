"""Stage III (paper §3.4): super-resolution to 1,024 px with next-K token prediction, one epoch.

Starts from stage II's final trainable params (``base.init_from``).

The ``demo`` preset (``python -m mars_jax.train --config=configs/stage3.py:demo
--workdir=runs/demo_stage3``) super-resolves the demo's 32-px scenes (4×4 codes) to 64 px
(8×8 codes) with K = 4. Its shards (``data/demo/stage3_8000``) are built on first use, like
stage I's. It continues the stage-I demo run (``base.init_from = "runs/demo_stage1"``, the
README's first command), whose model already draws scenes from captions; the next-K heads
start fresh. The paper's stage III continues stage II; the demo skips the stage-II run (its
64-px scenes have one aspect ratio, so stage II would add ~10 minutes and nothing new).

Measurements: docs/RESULTS.md.
"""

from configs import common


def get_config(arg: str | None = None):
    preset = common.check_preset(arg)
    c = common.apply_preset(common.base_config(3, preset), preset)
    # Next-K-token prediction (paper eq. 2; docs/NKTP.md): 4 codes per step, written in
    # region-interleaved order so the 4 codes predicted together lie in different quadrants.
    c.model.nktp_k = 4
    if preset == "qwen7b":
        c.base.checkpoint = "checkpoints/qwen7b_base"
        c.base.init_from = "runs/stage2_qwen7b"
        c.train.global_batch = 1536  # 24 per GPU × 64 GPUs (paper §4.1)
        c.train.log_every = 10
        c.data.num_examples = 10_000_000  # paper §3.4: 10 M triplets
        c.checkpoint.every_steps = 500
        c.model.remat_policy = "full"
        # Paper §4.1: 24 images per GPU; high-res targets at 1,024 px long side (low-res
        # 256 px grids x4: 64x64 codes for a square image), as the paper trains. 3 micro-
        # batches of 8 sequences per device: 25.1 - 37.2 GiB/device on 64 devices with
        # blockwise attention (docs/SCALE.md; the materialised scores needed ~120 GiB/device
        # at one sequence per device).
        c.data.hires_scale = 4
        c.train.grad_accum = 3
    elif preset in common.DEMO_PRESETS:
        c.data.demo_scenes = 8000  # 2,000 steps × 16 see each 4 times
        c.data.demo_kind_mix = None  # the held-out prompts' (default) mix
        c.data.shards = common.demo_shards_dir(3, c.data.demo_scenes, None)  # built on first use
        c.base.init_from = f"runs/{preset}_stage1"  # the stage-I demo run; see the docstring
        c.sample.every_steps = 0  # the preview samples text→image, which this run does not train
        # Longer sequences and four heads: batch 16 keeps the run near 10 CPU minutes.
        c.train.global_batch = 16
        c.train.num_steps = 2000
        c.optim.peak_lr = 2e-3
    return c
