"""Stage II (paper §3.4): text→image on refined captions, aspect-ratio buckets, two epochs.

Starts from stage I's final trainable params (``base.init_from``).
"""

from configs import common


def get_config(arg: str | None = None):
    preset = common.check_preset(arg)
    c = common.apply_preset(common.base_config(2, preset), preset)
    if preset == "qwen7b":
        c.base.checkpoint = "checkpoints/qwen7b_base"
        c.base.init_from = "runs/stage1_qwen7b"
        c.train.global_batch = 4096  # 256 px (short side), 64 per GPU × 64 GPUs
        c.train.log_every = 10
        c.data.num_examples = 50_000_000  # paper §3.4: 50 M curated pairs
        c.checkpoint.every_steps = 500
        c.model.remat_policy = "full"
        # One pass of 64 sequences per device: 25.4 (16x16) to 41.2 GiB/device (16x32 and
        # 32x16, the aspect-2 buckets) on 64 devices (docs/SCALE.md).
        c.train.grad_accum = 1
    elif preset in common.DEMO_PRESETS:
        c.base.init_from = f"runs/{preset}_stage1"
    return c
