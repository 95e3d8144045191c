"""Stage I (paper §3.4): text→image and captioning at 256 px, one epoch.

``python -m mars_jax.train --config=configs/stage1.py:qwen7b --workdir=...``
"""

from configs import common


def get_config(arg: str | None = None):
    preset = common.check_preset(arg)
    c = common.apply_preset(common.base_config(1, preset), preset)
    if preset == "qwen7b":
        c.base.checkpoint = "checkpoints/qwen7b_base"  # python -m mars_jax.convert output
        c.train.global_batch = 4096  # 64 per GPU × 64 GPUs (paper §4.1)
        c.train.log_every = 10
        c.data.num_examples = 200_000_000  # paper §3.4: ~200 M pairs
        c.checkpoint.every_steps = 500
        c.model.remat_policy = "full"
        # 64 sequences per device in one pass: 21.5 GiB/device on 64 devices (docs/SCALE.md).
        c.train.grad_accum = 1
    return c
