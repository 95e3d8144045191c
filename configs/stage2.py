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
        c.train.grad_accum = 8  # text 256 + 24x16 grids: 8 micro-batches of 8, 54 GiB/device
    elif preset == "demo":
        c.base.init_from = "runs/demo_stage1"
    return c
