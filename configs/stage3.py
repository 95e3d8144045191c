"""Stage III (paper §3.4): super-resolution to 512 px with next-K token prediction, one epoch.

Starts from stage II's final trainable params (``base.init_from``).
"""

from configs import common


def get_config(arg: str | None = None):
    preset = common.check_preset(arg)
    c = common.apply_preset(common.base_config(3, preset), preset)
    # Next-K-token prediction (paper eq. 2; docs/NKTP.md): 4 codes per step, written in
    # region-interleaved order so the 4 codes predicted together lie in different quadrants.
    c.model.nktp_k = 4
    c.data.hires_order_k = c.model.nktp_k
    if preset == "qwen7b":
        c.base.checkpoint = "checkpoints/qwen7b_base"
        c.base.init_from = "runs/stage2_qwen7b"
        c.train.global_batch = 1536  # 512 px: 24 per GPU × 64 GPUs (paper §4.1)
        c.train.log_every = 10
        c.data.num_examples = 10_000_000  # paper §3.4: 10 M triplets
        c.checkpoint.every_steps = 500
        c.model.remat_policy = "full"
        # Paper §4.1: 24 images per GPU at 512 px. Low-res 256 px grids ×2 → 512 px targets.
        # One sequence per device per micro-batch (24 micro-batches) fits 80 GiB; 1024 px
        # targets (hires_scale=4) need ~120 GiB/device with the materialised attention scores.
        c.data.hires_scale = 2
        c.train.grad_accum = 24
    elif preset == "demo":
        c.data.shards = "data/demo/stage3"
        c.base.init_from = "runs/demo_stage2"
    return c
