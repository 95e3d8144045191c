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
- ``base``: converted base checkpoint dir (empty = random init from ``seed``),
  ``init_from``: a previous stage's workdir whose final trainable params start this stage,
  and ``demo_lm``: write the shipped demo LLM to ``checkpoint`` on first use;
- ``sample``: images for fixed prompts during training (``every_steps``, ``prompts``, ...).

Presets: ``qwen7b`` mirrors the paper, ``tiny`` is for tests, ``demo`` and ``demo_frozen``
train on CPU in minutes on the synthetic shapes data, from the shipped pretrained demo LLM,
both stage-I tasks: ``demo`` (the README's first command) also trains copies of the LLM's
layers, the best-scoring demo measured; ``demo_frozen`` is the MARS recipe, the LLM frozen.

Measurements behind the presets' settings: docs/RESULTS.md.
"""

from __future__ import annotations

import ml_collections

from mars_jax.data.config import default_data_config
from mars_jax.model.config import ModelConfig

PRESETS = ("qwen7b", "tiny", "demo", "demo_frozen")
DEMO_PRESETS = ("demo", "demo_frozen")
# Where the shipped demo LLM is written as a base checkpoint on first use.
DEMO_BASE_DIR = "data/demo/base_lm"

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


# Training mix of the demo's scene kinds: more two-object relations, the hardest prompts
# (held-out prompts keep the default mix; docs/RESULTS.md).
DEMO_KIND_MIX = {"single": 0.3, "count": 0.1, "relation": 0.6}


def demo_shards_dir(stage: int, num_scenes: int, kind_mix: dict[str, float] | None) -> str:
    """Where the demo shards of these scenes are built (on first use); a training mix of
    scene kinds other than the default (None) is named, weights in the mix's order."""
    name = f"data/demo/stage{stage}_{num_scenes}"
    if kind_mix is not None:
        name += "_mix" + "-".join(str(round(100 * w)) for w in kind_mix.values())
    return name


def check_preset(arg: str | None) -> str:
    preset = arg or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"unknown config preset {preset!r}; choose one of {PRESETS}")
    return preset


def optim_config(peak_lr: float = 1e-4, warmup_ratio: float = 0.01) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            # "adamw", or "muon" (orthogonalised momentum for the layer matrices; the same
            # peak_lr: its updates are scaled to AdamW's size).
            name="adamw",
            # Muon's trainable subtrees: the vision expert ("layers"), the LLM layer copies
            # ("unfrozen_layers"); their other leaves and the rest of the model take AdamW.
            muon_groups=("layers", "unfrozen_layers"),
            muon_ns_steps=5,  # Newton-Schulz iterations per update (3 costs less, a bit rougher)
            peak_lr=peak_lr,
            warmup_ratio=warmup_ratio,
            end_lr_ratio=0.0,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            grad_clip=1.0,
            no_decay=("bias", "ln", "norm"),
            # Learning rate of the LLM layer copies (`model.unfreeze`) relative to peak_lr.
            unfrozen_lr_scale=1.0,
            # Keep a moving average of the trainable weights with this decay (0: none); runs
            # that keep one sample, evaluate and export it (train_lib/ema.py).
            ema_decay=0.0,
        )
    )


def base_config(stage: int, preset: str) -> ml_collections.ConfigDict:
    """Everything but the preset-specific sizes; stage files fill in the rest."""
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.preset = preset
    model = {"qwen7b": ModelConfig.qwen7b, "tiny": ModelConfig.tiny}
    model.update({name: ModelConfig.demo for name in DEMO_PRESETS})
    c.model = ml_collections.ConfigDict(model[preset]().to_dict())
    c.data = default_data_config(stage)
    c.optim = optim_config()
    c.train = ml_collections.ConfigDict(
        dict(
            global_batch=16,
            num_steps=0,  # <= 0: data.num_epochs passes over data.num_examples
            grad_accum=1,
            log_every=1,
            # Every this many steps, the loss of the step's batch with each row's condition
            # taken from another row: `<task>/reading_gap` (train_lib/reading.py). 0: off.
            reading_every=100,
            nonfinite="skip",  # "skip": drop the update and go on; "stop": end the run
            # More consecutive skipped updates than this end the run with an error (0: no
            # limit). A non-finite train state always ends it (docs/RELIABILITY.md).
            max_consecutive_skips=20,
            seed=0,
            # Share of the image codes the model reads that are swapped for random codes
            # (their targets stay; train_lib/augment.py). 0: off.
            image_code_noise=0.0,
            # Loss weight of each token of a task: the loss is the weighted token mean.
            task_weights=dict(t2i=1.0, caption=1.0, sr=1.0),
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
    # on_damage: "fallback" sets a damaged checkpoint aside and resumes from the previous
    # intact one, "stop" ends the run; checksums: sha256 of every file after each save.
    c.checkpoint = ml_collections.ConfigDict(
        dict(every_steps=1000, keep=3, async_save=True, on_damage="fallback", checksums=True)
    )
    c.base = ml_collections.ConfigDict(dict(checkpoint="", seed=0, init_from="", demo_lm=False))
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
            # Images drawn per prompt by `generate` / `evaluate`; the one the model's own
            # captions rank first is kept (needs the caption task; previews draw one).
            candidates=1,
            # What those captions read of each candidate: "pixels" (the VQ encoding of its
            # decoded image) or "codes" (the drawn codes; docs/RESULTS.md compares them).
            judge="pixels",
            # A candidate image flatter than this (pixel standard deviation, uint8 levels:
            # an empty canvas) is kept only when every candidate is; 0: no check.
            blank_std=3.0,
            # One image per prompt: a blank draw is drawn again (as the prompt's next
            # candidate) up to this many times; 0: kept.
            blank_redraws=3,
            # Captions written per image by `caption` / `evaluate --bench=captions`, the one
            # that best explains the image both ways kept; 0: `candidates`.
            caption_candidates=0,
            seed=0,
            vq="",
        )
    )
    return c


def demo_preview_prompts() -> list[str]:
    """Held-out demo prompts (color × shape pairs never trained on), two per language."""
    from mars_jax.demo import shapes

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
    elif preset in DEMO_PRESETS:
        c.model.image_logits = "vision_only"
        # Shapes scenes built on first use (mars_jax/demo/shards.py); each seen about once.
        c.data.demo_scenes = 40000
        c.data.demo_kind_mix = dict(DEMO_KIND_MIX)
        c.data.shards = demo_shards_dir(c.stage, c.data.demo_scenes, DEMO_KIND_MIX)
        c.data.num_epochs = 10  # the iterator ends after these passes (num_steps ends first)
        c.model.codebook_size = 512  # the demo VQ's codes: the vision head skips the rest
        c.model.compute_dtype = "float32"  # XLA:CPU has no fast bf16 matmul
        c.model.attention = "reference"  # ~80-token sequences: materialised scores are cheaper
        c.model.scan_unroll = c.model.num_layers  # straight-line layers: ~11 % faster steps
        c.model.image_pos_grid = (8, 8)  # a code's place in the 8x8 grid (deviation from MARS)
        c.data.demo_vq = ""  # VQ tokenizer dir; empty: the one shipped in mars_jax/assets
        c.sample.every_steps = 200
        # The best measured sampling; `generate`, `evaluate` and `cascade` use it by default.
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
        c.train.num_steps = 1700  # stage I: 1,000 / 1,300 (its caption rows cost more)
        c.train.log_every = 10
        c.train.reading_every = 50
        c.optim.peak_lr = 6e-4  # the best of 2e-3, 1e-3, 6e-4, 4e-4
        c.optim.warmup_ratio = 0.05
        c.optim.end_lr_ratio = 0.1  # still learning at the end of the CPU budget
        c.checkpoint.every_steps = 100
        c.checkpoint.keep = 2
        _demo_pretrained_llm(c, frozen=preset == "demo_frozen")
    return c


def _demo_pretrained_llm(c: ml_collections.ConfigDict, frozen: bool) -> None:
    """Both demo presets load the shipped demo LLM (pretrained on text alone), train a fresh
    vision expert and both stage-I tasks. ``demo`` (the README's first command) also trains
    copies of the LLM's layers (a deviation from MARS); ``demo_frozen`` is the MARS recipe,
    the LLM frozen. Measurements behind each choice: docs/RESULTS.md."""
    c.base.checkpoint = DEMO_BASE_DIR
    c.base.demo_lm = True
    # Its head ties every id its corpus never used to one column: the loss scores captions
    # from the ~125 distinct columns, exactly (model.text_head_ids).
    from mars_jax.demo import lm_asset

    c.model.text_head_ids = lm_asset.token_ids()
    # Copies of the demo LLM's attention and FFN learned image codes more slowly than fresh ones.
    c.model.vision_expert_init = "random"
    if not frozen:
        c.model.unfreeze = ("text_attn", "text_mlp", "o", "ln1", "ln2")
    if c.stage == 1:
        # With the tied head a caption row costs about an image row: 8 caption rows on top
        # of the 28 image rows, each caption token weighing 3 image tokens (at 1 captions are
        # ~2 % of the loss and were never learned; 10 captioned better and drew worse).
        c.train.global_batch = 36
        c.data.caption_ratio = 8 / 36
        c.train.task_weights.caption = 3.0
        if frozen:
            c.train.num_steps = 1300
            # Muon for the vision expert, the only layers that learn: three seeds drew
            # 0.71-0.80 / 0.47-0.60 against AdamW's 0.40-0.60 / 0.28-0.42 (docs/RESULTS.md).
            c.optim.name = "muon"
        else:
            # The fresh vision expert at 1.5e-3, the layer copies at 6e-4: it captions better
            # than one rate of 6e-4 over 1,300 steps or an expert at 1e-3, and draws about as
            # well. 1,000 steps: the first command in ~13 of its 15 minutes on a 2-core CPU,
            # best of 8 (docs/RESULTS.md).
            c.optim.peak_lr = 1.5e-3
            c.optim.unfrozen_lr_scale = 0.4
            c.train.num_steps = 1000
            # Draw 8 images per prompt, keep the one its own captions rank first
            # (sampling/rerank.py): held-out color and shape rise by ~0.15 (docs/RESULTS.md).
            c.sample.candidates = 8
            # Captions are cheap to write: the caption bench named held-out shapes far more
            # often with 16 than with 8, and with 32 than with 16 (four training seeds: 0.86-1.00
            # against 0.73-0.95, ~20 s more); images drew no better with 16 (docs/RESULTS.md).
            c.sample.caption_candidates = 32
            # A tenth of the image codes it reads swapped for random ones (targets kept):
            # it leans on its prompt more; one image per prompt drew better in every seed
            # measured, the weakest seed's best of 8 shape 0.45-0.55 -> 0.70-0.76.
            c.train.image_code_noise = 0.1
            # Weight decay 1.0 instead of 0.1: three of four training seeds kept the shape
            # floor, one of the same four at 0.1; their mean is alike (docs/RESULTS.md).
            c.optim.weight_decay = 1.0
            # Sample from a moving average of the weights: four training seeds drew shapes
            # within 0.78-0.85 instead of 0.70-0.89 (the same training; docs/RESULTS.md).
            c.optim.ema_decay = 0.99
