"""Configs, schedule, sharding rules and the FLOPs/MFU arithmetic (no training here)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags
from jax.sharding import AbstractMesh, AxisType
from ml_collections import config_flags

from configs import stage1, stage2, stage3
from mars_jax import train
from mars_jax.model import params as params_lib
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import vocab
from mars_jax.train_lib import metrics, schedule, sharding
from mars_jax.train_lib import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {1: stage1, 2: stage2, 3: stage3}


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("preset", ["qwen7b", "tiny", "demo", "demo_frozen"])
def test_every_preset_builds(stage, preset):
    c = STAGES[stage].get_config(preset)
    assert c.stage == stage and c.data.stage == stage
    ModelConfig.from_dict(c.model)  # every model key is a ModelConfig field
    assert set(c.keys()) >= {"model", "data", "optim", "train", "mesh", "checkpoint", "base"}
    assert c.train.nonfinite in ("skip", "stop")


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown config preset 'big'"):
        stage1.get_config("big")


@pytest.mark.parametrize(
    "stage, batch, epochs, examples", [(1, 4096, 1, 200e6), (2, 4096, 2, 50e6), (3, 1536, 1, 10e6)]
)
def test_qwen7b_presets_follow_the_paper(stage, batch, epochs, examples):
    c = STAGES[stage].get_config("qwen7b")
    assert (c.optim.b1, c.optim.b2, c.optim.weight_decay) == (0.9, 0.95, 0.1)
    assert (c.optim.peak_lr, c.optim.warmup_ratio) == (1e-4, 0.01)
    assert c.train.global_batch == batch and c.data.num_epochs == epochs
    assert c.data.num_examples == examples
    assert tuple(c.mesh.shape) == (1, -1, 1)  # FSDP over all devices (ZeRO-3-like)
    assert (c.model.num_layers, c.model.width, c.model.mlp_dim) == (32, 4096, 11008)
    assert c.base.checkpoint
    if stage > 1:
        assert c.base.init_from  # starts from the previous stage
    steps = schedule.total_steps(c.train.num_steps, epochs, c.data.num_examples, batch)
    assert steps == math.ceil(epochs * examples / batch)


def test_command_line_overrides(monkeypatch):
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=False)
    argv = ["prog", "--config=configs/stage1.py:tiny", "--config.optim.peak_lr=3e-4"]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags finds the overrides in sys.argv
    fv(argv)
    assert fv.config.optim.peak_lr == 3e-4
    assert fv.config.train.global_batch == stage1.get_config("tiny").train.global_batch


def test_warmup_cosine_schedule():
    peak, n, warm = 1e-4, 1000, 10
    lr = schedule.warmup_cosine(peak, n, 0.01)
    expect = lambda t: (
        peak * t / warm
        if t < warm
        else 0.5 * peak * (1 + math.cos(math.pi * (t - warm) / (n - warm)))
    )
    for t in (0, 5, 10, 100, 500, 999, 1000):
        np.testing.assert_allclose(float(lr(t)), expect(t), rtol=1e-5, atol=1e-9)


def test_total_steps_needs_a_size_for_epochs():
    assert schedule.total_steps(7, 1, None, 8) == 7
    with pytest.raises(ValueError, match="data.num_examples"):
        schedule.total_steps(0, 1, None, 8)


def test_mesh_shape_resolution():
    assert sharding.resolve_mesh_shape((1, -1, 1), 64) == (1, 64, 1)
    assert sharding.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="does not fit 8 devices"):
        sharding.resolve_mesh_shape((3, -1, 1), 8)
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.resolve_mesh_shape((-1, -1, 1), 8)


def test_hybrid_mesh_needs_matching_granules():
    with pytest.raises(ValueError, match="dcn_shape"):
        sharding.make_mesh((1, -1, 1), (2, 1, 1))


def test_qwen7b_params_are_sharded_over_64_devices():
    """FSDP rules split every large 7B weight and its Adam moments over all 64 devices."""
    c = stage1.get_config("qwen7b")
    cfg = ModelConfig.from_dict(c.model)
    mesh = AbstractMesh((1, 64, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    rules = [tuple(r) for r in c.mesh.rules]
    abstract = params_lib.abstract_params(cfg)
    logical = params_lib.logical_axes(cfg)
    per_device = 0
    for part in ("frozen", "trainable"):
        flat = jax.tree_util.tree_flatten_with_path(abstract[part])[0]
        axes = jax.tree.leaves(logical[part], is_leaf=params_lib.is_axes_leaf)
        for (path, x), names in zip(flat, axes, strict=True):
            spec = sharding.logical_to_spec(names, x.shape, mesh, rules)
            if x.size >= 1_000_000:
                assert "fsdp" in jax.tree.leaves(tuple(spec)), jax.tree_util.keystr(path)
            split = 64 if "fsdp" in jax.tree.leaves(tuple(spec)) else 1
            per_device += x.size * x.dtype.itemsize / split * (3 if part == "trainable" else 1)
    assert per_device / 2**30 < 2.0  # params + 2 Adam moments per device, in GiB


def test_optimizer_masks_decay_on_biases():
    trainable = {"layers": {"vision_attn": {"q": np.ones((2, 4)), "q_bias": np.ones((2,))}}}
    mask = state_lib.decay_mask(trainable)
    assert mask["layers"]["vision_attn"] == {"q": True, "q_bias": False}


def test_unfrozen_lr_scale_scales_the_layer_copies_updates_only():
    """AdamW's update of the LLM layer copies times `optim.unfrozen_lr_scale` (learning rate
    and weight decay alike); the vision expert's update unchanged."""
    rng = np.random.default_rng(0)
    trainable = {
        "layers": {"vision_mlp": {"up": rng.normal(size=(3, 4)).astype(np.float32)}},
        state_lib.UNFROZEN_KEY: {"o": rng.normal(size=(4, 2)).astype(np.float32)},
    }
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), trainable)

    def first_update(scale):
        c = stage1.get_config("tiny")
        c.optim.unfrozen_lr_scale = scale
        tx, _ = state_lib.make_optimizer(c.optim, num_steps=10)
        state = tx.init(trainable)
        for _ in range(2):  # past the first warm-up step, whose lr is 0
            updates, state = tx.update(grads, state, trainable)
        return updates

    plain, scaled = first_update(1.0), first_update(0.25)
    np.testing.assert_allclose(
        scaled["layers"]["vision_mlp"]["up"], plain["layers"]["vision_mlp"]["up"]
    )
    copies = state_lib.UNFROZEN_KEY
    np.testing.assert_allclose(scaled[copies]["o"], 0.25 * plain[copies]["o"], rtol=1e-6)
    assert np.abs(plain[copies]["o"]).max() > 0


def test_peak_flops_lookup():
    assert metrics.peak_flops_per_device("NVIDIA A100-SXM4-80GB", "gpu", 8) == 312e12
    assert metrics.peak_flops_per_device("NVIDIA H100 80GB HBM3", "gpu", 8) == 989e12
    assert metrics.peak_flops_per_device("TPU v5 lite", "tpu", 4) == 197e12
    assert metrics.peak_flops_per_device("TPU v5p", "tpu", 4) == 459e12
    assert metrics.peak_flops_per_device("Mystery", "gpu", 1) is None
    assert metrics.peak_flops_per_device("cpu", "cpu", 1) > 0


def test_flops_formula_worked_example():
    """One layer, D=4, H=KV=1, Dh=4, F=8; t2i with 2 text + 3 vision tokens, vision-only head.

    N_qkv = 4·3·4 = 48, N_o = 16, N_mlp = 3·4·8 = 96 weights per token.
    text tokens (no backward): 2·(48+96+16) = 320 each          → 2 · 320 = 640
    vision tokens:            6·(48+96) + 4·16 = 928 each       → 3 · 928 = 2784
    attention pairs: text 2·3/2 = 3 (fwd 4·Dh = 16 each)        → 48
                     vision 3·2 + 3·4/2 = 12 (fwd+bwd 12·Dh = 48) → 576
    vision head (loss segment): 3 tokens · 6·D·8200            → 590400
    """
    cfg = ModelConfig.tiny(
        num_layers=1, width=4, num_heads=1, num_kv_heads=1, head_dim=4, mlp_dim=8
    ).replace(image_logits="vision_only")
    lay = (("text", 2), ("vision", 3))
    want = 640 + 2784 + 48 + 576 + 3 * 6 * 4 * vocab.VISION_VOCAB_SIZE
    assert metrics.flops_per_step(cfg, {"t2i": lay}, {"t2i": 1}) == want
    # The full softmax adds the frozen text head at vision positions (forward + input grad).
    full = metrics.flops_per_step(cfg.replace(image_logits="full"), {"t2i": lay}, {"t2i": 1})
    assert full - want == 3 * 4 * 4 * vocab.TEXT_VOCAB_SIZE
    # Captioning: text after vision needs a backward pass (activation grads only).
    cap = metrics.flops_per_sequence(cfg, (("vision", 3), ("text", 2)), (1,))
    assert cap > metrics.flops_per_sequence(cfg, lay, (1,))
    # Unfrozen LLM groups: text tokens get a backward pass (4·N) plus the weight gradients of
    # the unfrozen matmuls (2·N); vision tokens the weight gradient of an unfrozen O (2·N_o).
    # Text: 2 · (4·(48+96+16) + 2·(48+16)) = 1536 instead of 640; vision: 3 · 2·16 = 96 more;
    # text attention pairs get their backward: 3 pairs · 8·Dh = 96 more.
    unfrozen = cfg.replace(unfreeze=("text_attn", "o", "ln1"))
    got = metrics.flops_per_step(unfrozen, {"t2i": lay}, {"t2i": 1})
    assert got - want == (1536 - 640) + 96 + 96
    # A 100-code VQ: the vision head has 100 + 8 rows instead of 8,200.
    small = metrics.flops_per_step(cfg.replace(codebook_size=100), {"t2i": lay}, {"t2i": 1})
    assert want - small == 3 * 6 * 4 * (vocab.NUM_IMAGE_CODES - 100)


def test_compile_only_cli_prints_per_device_memory():
    """`--num_devices` is honoured although JAX flags are parsed after JAX would start."""
    # The suite's flags without their device count.
    env = dict(
        os.environ, XLA_FLAGS=train.xla_flags_with_host_devices(os.environ["XLA_FLAGS"], None)
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mars_jax.train",
            "--config=configs/stage2.py:tiny",
            "--config.model.image_logits=vision_only",
            "--compile_only",
            "--num_devices=4",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "'fsdp': 4" in result.stdout and " 4 cpu devices" in result.stdout
    name, value = lines[-1].split("=")
    assert name == "per_device_gib" and 0 < float(value) < 4
