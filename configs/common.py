"""Sections shared by the stage configs (``configs/stage{1,2,3}.py``).

A config is an ``ml_collections.ConfigDict`` with the sections

- ``model``: fields of ``mars_jax.model.config.ModelConfig``;
- ``data``: ``mars_jax.data.config.default_data_config(stage)`` plus preset overrides;
- ``optim``: AdamW + warm-up/cosine (paper §4.1: β1 0.9, β2 0.95, wd 0.1, peak 1e-4, 1 %);
- ``train``: global batch, steps, gradient accumulation, logging, non-finite policy, seed;
- ``mesh``: ``shape`` over ``('data', 'fsdp', 'tensor')`` (one ``-1`` = the rest of the
  devices), ``dcn_shape`` for multi-slice/multi-node (data parallel across the slow network),
  ``rules`` mapping logical parameter axes to mesh axes;
- ``checkpoint``: ``every_steps``, ``keep``, ``async_save``;
- ``base``: converted base checkpoint dir (empty = random init from ``seed``), and
  ``init_from``: a previous stage's workdir whose final trainable params start this stage;
- ``sample``: images for fixed prompts during training (``every_steps``, ``prompts``, ...).

Presets: ``qwen7b`` mirrors the paper, ``tiny`` is for tests, ``demo`` trains on CPU in
minutes on the synthetic shapes data.

Memory of the ``qwen7b`` presets on 64 devices (``python -m mars_jax.train --compile_only
--num_devices=64``, XLA:CPU ``memory_analysis``, remat policy ``full``): stage I, 64 images
per device in 4 micro-batches: 55.3 GiB/device (1 micro-batch: 212 GiB); stage II, 8
micro-batches: 54.5 GiB (4: 107 GiB); stage III at 512 px, 24 micro-batches of one image:
35.1 GiB. All fit an 80 GiB A100/H100.
"""

from __future__ import annotations

import ml_collections

from mars_jax.data.config import default_data_config
from mars_jax.model.config import ModelConfig

PRESETS = ("qwen7b", "tiny", "demo")

# FSDP (ZeRO-3-like) by default: every weight split along its `embed` axis over the `fsdp`
# mesh axis; `tensor` (size 1 by default) splits heads / MLP / vocab for tensor parallelism.
FSDP_RULES = (
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
)


# Weights of the demo's training scene kinds (`mars_jax.demo.shapes.check_kind_mix`). The
# held-out prompts keep the default mix (0.4 / 0.2 / 0.4). Text-to-image stages train on
# more two-object relations, the hardest prompts: 1,700 steps, guidance 2.5, temperature 0.4,
# 256 held-out prompts (two sets) scored 0.92 / 0.81 and 0.89 / 0.80 (color / shape) with
# this mix, 0.86 / 0.78 (first set) with the default one, 0.87 / 0.80 and 0.84 / 0.78 with
# 0.25 / 0.2 / 0.55 (1,800 steps). Counts suffer (count right 0.46 / 0.57 vs 0.60).
DEMO_KIND_MIX = {"single": 0.3, "count": 0.1, "relation": 0.6}


def demo_shards_dir(stage: int, num_scenes: int, kind_mix: dict[str, float]) -> str:
    """Where the demo shards of these scenes are built (on first use; the mix is named
    unless it is the default one)."""
    from mars_jax.demo import shapes  # noqa: PLC0415

    name = f"data/demo/stage{stage}_{num_scenes}"
    if kind_mix != shapes.SCENE_KIND_PROBS:
        name += "_mix" + "-".join(str(round(100 * kind_mix[k])) for k in shapes.SCENE_KIND_PROBS)
    return name


def check_preset(arg: str | None) -> str:
    preset = arg or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"unknown config preset {preset!r}; choose one of {PRESETS}")
    return preset


def optim_config(peak_lr: float = 1e-4, warmup_ratio: float = 0.01) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            peak_lr=peak_lr,
            warmup_ratio=warmup_ratio,
            end_lr_ratio=0.0,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            grad_clip=1.0,
            no_decay=("bias", "ln", "norm"),
        )
    )


def base_config(stage: int, preset: str) -> ml_collections.ConfigDict:
    """Everything but the preset-specific sizes; stage files fill in the rest."""
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.preset = preset
    model = {"qwen7b": ModelConfig.qwen7b, "tiny": ModelConfig.tiny, "demo": ModelConfig.demo}
    c.model = ml_collections.ConfigDict(model[preset]().to_dict())
    c.data = default_data_config(stage)
    c.optim = optim_config()
    c.train = ml_collections.ConfigDict(
        dict(
            global_batch=16,
            num_steps=0,  # <= 0: data.num_epochs passes over data.num_examples
            grad_accum=1,
            log_every=1,
            nonfinite="skip",  # "skip": drop the update and go on; "stop": end the run
            seed=0,
            peak_flops_per_device=0.0,  # 0: look up by device kind (metrics.py)
            # Accelerator memory (GiB) for `train --compile_only`: a bucket whose step needs
            # more is an error; more than 7/8 of it (70 of 80) is flagged as short of headroom.
            device_memory_gib=80.0,
        )
    )
    c.data.num_examples = 0  # data set size, for epoch-based step counts (0: unknown)
    c.mesh = ml_collections.ConfigDict(
        dict(shape=(1, -1, 1), dcn_shape=(1, 1, 1), rules=[list(r) for r in FSDP_RULES])
    )
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
    c.base = ml_collections.ConfigDict(dict(checkpoint="", seed=0, init_from=""))
    # Images for fixed prompts during training (mars_jax/preview.py): every `every_steps`
    # and at the last step, into <workdir>/samples/ and TensorBoard. `vq`: the VQ tokenizer
    # to decode with (default: the one named by the shards' manifest).
    c.sample = ml_collections.ConfigDict(
        dict(
            every_steps=0,
            prompts=[],
            cfg_scale=1.5,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            seed=0,
            vq="",
        )
    )
    return c


def demo_preview_prompts() -> list[str]:
    """Held-out demo prompts (color × shape pairs never trained on), two per language."""
    from mars_jax.demo import shapes  # noqa: PLC0415

    prompts = shapes.eval_prompts(num_scenes=2, seed=0)
    return [p["caption"] for p in prompts]


def apply_preset(c: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
    """Sizes shared by all stages for the ``tiny`` and ``demo`` presets."""
    if preset == "tiny":
        c.data.synthetic = True
        c.data.text_len = 8
        c.data.grids = ((4, 4),)
        c.data.hires_scale = 2
        c.train.global_batch = 16
        c.train.num_steps = 6
        c.optim.peak_lr = 1e-3
        c.optim.warmup_ratio = 0.2
        c.checkpoint.every_steps = 2
        c.checkpoint.keep = 2
    elif preset == "demo":
        c.model.image_logits = "vision_only"
        # Shapes scenes built on first use (mars_jax/demo/shards.py; 40,000 in ~50 s). With
        # 8,000 the 1,300-step run saw each scene 5 times and memorised them: loss on seen
        # scenes 0.53 vs 0.64 on unseen ones of the training distribution, 0.82 held out;
        # with 40,000 (each seen about once) 0.61 / 0.59 / 0.74.
        c.data.demo_scenes = 40000
        c.data.demo_kind_mix = dict(DEMO_KIND_MIX)
        c.data.shards = demo_shards_dir(c.stage, c.data.demo_scenes, DEMO_KIND_MIX)
        c.data.num_epochs = 10  # the iterator ends after these passes (num_steps ends first)
        # The demo has no pretrained LLM: its "LLM" is a random init. Image tokens cannot
        # learn to read captions through random frozen keys and values in a CPU budget (the
        # loss with true and with shuffled captions stayed equal over 1,000 steps), so the
        # text-to-image demo stages also train copies of the LLM's layers (a deviation from
        # MARS, `ModelConfig.unfreeze`; the embeddings and the text head stay frozen).
        # Stage III starts from the stage-I run, trained copies included.
        c.model.unfreeze = ("text_attn", "text_mlp", "o", "ln1", "ln2")
        # The demo VQ has 512 codes: the vision head skips the other 7,680 (30% of the
        # step's FLOPs).
        c.model.codebook_size = 512
        c.data.codebook_size = 512  # synthetic batches (benchmarks)
        # XLA:CPU has no native bf16 matmul: float32 compute made the demo step ~10%
        # faster (bench.train_step: 0.49 vs 0.52-0.57 s). Weights stay stored in bf16.
        c.model.compute_dtype = "float32"
        # 1-D rotary positions are relative: a code learns where in the image it is only by
        # attending back to <img>. Learned row and column embeddings for the place in the
        # 8x8 grid (`ModelConfig.image_pos_grid`, a deviation from MARS; stage III: the
        # high-res grid) lifted a 1,300-step run's position, color and shape scores
        # (README, "Demo").
        c.model.image_pos_grid = (8, 8)
        # The frozen random text head cannot learn to caption (the caption loss stays at
        # ~ln(vocab)); the demo trains text→image only.
        c.data.caption_ratio = 0.0
        c.data.demo_vq = ""  # VQ tokenizer dir; empty: the one shipped in mars_jax/assets
        c.sample.every_steps = 200
        # Sampling, measured on the 1,700-step run (256 held-out prompts, two sets, color /
        # shape): guidance 2.5 and temperature 0.4 → 0.92 / 0.81 and 0.89 / 0.80; 2.5 and
        # 0.5 → 0.92 / 0.82, 0.89 / 0.76; 2.5 and 0.3 → 0.88 / 0.83, 0.89 / 0.78; 2.0 and 0.5
        # → 0.85 / 0.75, 0.87 / 0.81; 3.0 and 0.5 → 0.85 / 0.71; 1.5 and 0.8 (the earlier
        # default, best for the weaker 1,300-step model) → 0.81 / 0.70. `generate`,
        # `evaluate` and `cascade` use these unless told otherwise.
        c.sample.cfg_scale = 2.5
        c.sample.temperature = 0.4
        c.sample.prompts = demo_preview_prompts()
        # 64-px scenes, 8×8 codes (stage III: 32-px low-res, 4×4 codes, ×2); used by
        # synthetic batches and the benchmark, the shards carry their own grids.
        c.data.grids = ((4, 4),) if c.stage == 3 else ((8, 8),)
        c.data.hires_scale = 2
        # The longest demo caption is 14 tokens (Chinese relations); stages II/III put the
        # resolution first ("64x64 …", 4 more).
        c.data.text_len = 16 if c.stage == 1 else 24
        c.train.global_batch = 32
        # ~3 steps/s on the 2-core CPU: the README's command ends within ~12 minutes.
        c.train.num_steps = 1700
        c.train.log_every = 10
        # Peak lr, measured with row and column in-image embeddings (128 held-out prompts,
        # then 256 others): 2e-3 → 0.65 / 0.35; 1e-3 → 0.72 / 0.56, 0.70 / 0.55;
        # 6e-4 → 0.77 / 0.60, 0.79 / 0.61; 4e-4 → 0.70 / 0.57, 0.76 / 0.60 (color / shape).
        c.optim.peak_lr = 6e-4
        c.optim.warmup_ratio = 0.05
        c.optim.end_lr_ratio = 0.1  # still learning at the end of the CPU budget
        c.checkpoint.every_steps = 100
        c.checkpoint.keep = 2
    return c
