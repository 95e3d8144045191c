"""Stage III (paper §3.4): super-resolution to 512 px with next-K token prediction, one epoch.

Starts from stage II's final trainable params (``base.init_from``).
"""

from configs import common


def get_config(arg: str | None = None):
    preset = common.check_preset(arg)
    c = common.apply_preset(common.base_config(3, preset), preset)
    if preset == "qwen7b":
        c.base.checkpoint = "checkpoints/qwen7b_base"
        c.base.init_from = "runs/stage2_qwen7b"
        c.train.global_batch = 1536  # 512 px: 24 per GPU × 64 GPUs (paper §4.1)
        c.train.log_every = 10
        c.data.num_examples = 10_000_000  # paper §3.4: 10 M triplets
        c.checkpoint.every_steps = 500
        c.model.remat_policy = "full"
    elif preset == "demo":
        c.data.shards = "data/demo/stage3"
        c.base.init_from = "runs/demo_stage2"
    return c
