"""Model config, parameter tree (shapes, logical axes, vision init) and layouts."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mars_jax.model import params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import layout as L
from mars_jax.tokens import vocab


def test_config_roundtrip_presets_and_errors():
    for cfg in (ModelConfig.qwen7b(), ModelConfig.tiny(), ModelConfig.demo()):
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
        assert ModelConfig.from_dict(ml_collections.ConfigDict(cfg.to_dict())) == cfg
        hash(cfg)
    q = ModelConfig.qwen7b()
    assert (q.num_layers, q.width, q.num_heads, q.num_kv_heads, q.head_dim, q.mlp_dim) == (
        32,
        4096,
        32,
        32,
        128,
        11008,
    )
    with pytest.raises(ValueError, match="unknown keys.*'widht'"):
        ModelConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="ModelConfig.num_kv_heads"):
        ModelConfig.tiny(num_kv_heads=3)
    with pytest.raises(ValueError, match="ModelConfig.remat_policy"):
        ModelConfig.tiny(remat_policy="some")


def test_abstract_params_and_logical_axes_agree():
    cfg = ModelConfig.qwen7b()
    abstract = params.abstract_params(cfg)
    axes = params.logical_axes(cfg)
    flat_axes = jax.tree.leaves(axes, is_leaf=params.is_axes_leaf)
    assert jax.tree.structure(abstract) == jax.tree.structure(
        jax.tree.map(lambda _: 0, axes, is_leaf=params.is_axes_leaf)
    )
    for a, names in zip(jax.tree.leaves(abstract), flat_axes, strict=True):
        assert len(names) == a.ndim
    frozen = sum(np.prod(a.shape) for a in jax.tree.leaves(abstract["frozen"]))
    assert 7.6e9 < frozen < 7.8e9  # Qwen-7B
    assert abstract["frozen"]["embed"].dtype == jnp.bfloat16
    assert abstract["trainable"]["vision_head"].dtype == jnp.float32
    assert abstract["trainable"]["vision_embed"].shape == (vocab.VISION_VOCAB_SIZE, 4096)


def test_vision_init_from_text():
    cfg = ModelConfig.tiny(frozen_dtype="float32")
    p = jax.jit(params.init_params, static_argnums=0)(cfg, jax.random.key(0))
    fr, tr = jax.tree.map(np.asarray, (p["frozen"], p["trainable"]))
    np.testing.assert_allclose(tr["vision_embed"][0], np.mean(fr["embed"], 0), atol=1e-6)
    np.testing.assert_array_equal(tr["vision_embed"][0], tr["vision_embed"][-1])
    jax.tree.map(
        np.testing.assert_array_equal, tr["layers"]["vision_attn"], fr["layers"]["text_attn"]
    )
    jax.tree.map(
        np.testing.assert_array_equal, tr["layers"]["vision_mlp"], fr["layers"]["text_mlp"]
    )
    head_mean = np.mean(fr["text_head"], 1, keepdims=True)
    deviation = np.abs(tr["vision_head"] - head_mean)
    assert 0 < deviation.max() < 0.2 * float(np.std(fr["text_head"]))
    assert tr["vision_head"].dtype == np.float32


def test_zero_vision_queries_start_image_tokens_attending_uniformly():
    """`vision_query_init="zero"`: only the vision queries differ from the copy init, and an
    image token's first-layer attention weights are uniform over what it sees."""
    cfg = ModelConfig.tiny(frozen_dtype="float32", vision_query_init="zero")
    p = params.init_params(cfg, jax.random.key(0))
    fr, tr = jax.tree.map(np.asarray, (p["frozen"], p["trainable"]))
    attn, text = tr["layers"]["vision_attn"], fr["layers"]["text_attn"]
    assert not attn["q"].any() and not attn["q_bias"].any()
    for name in ("k", "v", "k_bias", "v_bias"):
        np.testing.assert_array_equal(attn[name], text[name])
    x = np.random.default_rng(0).normal(size=(5, cfg.width)).astype(np.float32)
    q = np.einsum("sd,dhk->shk", x, attn["q"][0]) + attn["q_bias"][0]
    k = np.einsum("sd,dhk->shk", x, text["k"][0]) + text["k_bias"][0]
    k = np.repeat(k, cfg.num_heads // cfg.num_kv_heads, axis=1)  # grouped-query heads
    scores = np.einsum("qhk,shk->hqs", q, k)
    assert np.ptp(scores) == 0  # softmax of equal scores: uniform attention
    with pytest.raises(ValueError, match="vision_query_init"):
        ModelConfig.tiny(vision_query_init="random")


def test_random_vision_expert_is_fresh_and_the_rest_still_copied():
    """`vision_expert_init="random"`: the vision QKV and FFN are new normal(0.02) draws, not
    the text expert; embeddings, head and unfrozen copies start as with "copy"."""
    copy_cfg = ModelConfig.tiny(frozen_dtype="float32", unfreeze=("o",))
    rand_cfg = copy_cfg.replace(vision_expert_init="random")
    frozen = params.init_frozen(copy_cfg, jax.random.key(0))
    copied = params.init_trainable_from_frozen(copy_cfg, frozen, jax.random.key(1))
    fresh = params.init_trainable_from_frozen(rand_cfg, frozen, jax.random.key(1))
    for group in ("vision_attn", "vision_mlp"):
        text = frozen["layers"]["text_" + group.split("_")[1]]
        for name, x in fresh["layers"][group].items():
            x = np.asarray(x, np.float32)
            assert x.shape == text[name].shape and x.dtype == copied["layers"][group][name].dtype
            assert not np.allclose(x, np.asarray(text[name], np.float32)), (group, name)
            assert 0.015 < x.std() < 0.025, (group, name, x.std())
    same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
    for key in ("vision_embed", "vision_head", "unfrozen_layers"):
        same(fresh[key], copied[key])
    with pytest.raises(ValueError, match="vision_expert_init"):
        ModelConfig.tiny(vision_expert_init="zero")


def test_narrow_vision_ffn_is_drawn_fresh_runs_and_is_counted():
    """`vision_mlp_dim`: the vision FFN has its own hidden size (random init only), the model
    runs with it, and the FLOP count of an image token shrinks by its matmuls."""
    from mars_jax.model import mars
    from mars_jax.train_lib import metrics

    wide = ModelConfig.tiny(vision_expert_init="random")
    narrow = wide.replace(vision_mlp_dim=32)
    frozen = params.init_frozen(narrow, jax.random.key(0))
    trainable = params.init_trainable_from_frozen(narrow, frozen, jax.random.key(1))
    mlp = trainable["layers"]["vision_mlp"]
    assert mlp["gate"].shape == mlp["up"].shape == (2, 64, 32) and mlp["down"].shape == (2, 32, 64)
    assert frozen["layers"]["text_mlp"]["gate"].shape == (2, 64, 128)  # the LLM is unchanged
    assert 0.015 < float(np.std(np.asarray(mlp["down"], np.float32))) < 0.025
    shapes = jax.tree.map(lambda x: tuple(x.shape), trainable)
    want = jax.tree.map(lambda s: tuple(s.shape), params.abstract_params(narrow)["trainable"])
    assert shapes == want

    layout = L.t2i(4, 9)
    codes = [vocab.FIRST_IMAGE_CODE + c for c in range(9)]
    tokens = jnp.asarray([[10, 11, 12, 13, vocab.IMAGE_START, *codes, vocab.IMAGE_END]])
    positions, valid = jnp.arange(15)[None], jnp.ones((1, 15), bool)
    logits = mars.forward_logits(frozen, trainable, tokens, positions, valid, layout, narrow)
    assert np.isfinite(np.asarray(logits, np.float32)).all()

    per_seq = lambda cfg: metrics.flops_per_sequence(cfg, layout, (1,))
    vision_tokens = 11
    saved = wide.num_layers * vision_tokens * 6 * 3 * wide.width * (128 - 32)
    assert per_seq(wide) - per_seq(narrow) == pytest.approx(saved)
    with pytest.raises(ValueError, match="vision_mlp_dim.*vision_expert_init"):
        ModelConfig.tiny(vision_mlp_dim=32)  # a copy of the text FFN has mlp_dim
    with pytest.raises(ValueError, match="vision_mlp_dim"):
        ModelConfig.tiny(vision_expert_init="random", vision_mlp_dim=-1)


def test_layouts():
    assert L.t2i(4, 9) == (("text", 4), ("vision", 11))
    assert L.caption(4, 9) == (("vision", 11), ("text", 4))
    assert L.super_resolution(3, 4, 16) == (("text", 3), ("vision", 24))
    assert L.target_layout(L.t2i(4, 9)) == (("text", 3), ("vision", 12))
    assert L.target_layout(L.caption(4, 9)) == (("vision", 10), ("text", 5))
    assert L.target_layout((("vision", 1), ("text", 3))) == (("text", 4),)
    tokens = np.array([[1, 2, vocab.IMAGE_START, vocab.FIRST_IMAGE_CODE, 7]])
    valid = np.ones(tokens.shape, bool)
    with pytest.raises(ValueError, match=r"batch 7: token 7 .* vision segment \[2, 5\)"):
        L.check_tokens(tokens, valid, (("text", 2), ("vision", 3)), "batch 7")
    tokens[0, 4] = vocab.FIRST_IMAGE_CODE
    L.check_tokens(tokens, valid, (("text", 2), ("vision", 3)), "batch 7")
    valid[0, 4] = False
    with pytest.raises(ValueError, match=r"padding inside the vision segment \[2, 5\)"):
        L.check_tokens(tokens, valid, (("text", 2), ("vision", 3)), "batch 7")
    valid[0, 4], valid[0, 0] = True, False
    with pytest.raises(ValueError, match=r"padding that is not PAD in \[0, 2\)"):
        L.check_tokens(tokens, valid, (("text", 2), ("vision", 3)), "batch 7")
    tokens[0, 0] = vocab.PAD
    L.check_tokens(tokens, valid, (("text", 2), ("vision", 3)), "batch 7")
