"""`ModelConfig.unfreeze`: trained copies of LLM layer groups replace the frozen ones.

The frozen tree itself must never change; the copies start equal to it (so the initial
model is the frozen-LLM model), are used by training, full-forward and cached decoding
alike, and get gradients from image tokens.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from configs import stage1
from mars_jax.model import decoder, mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import nktp as nktp_sampling
from mars_jax.tokens import vocab
from mars_jax.train_lib import loop

GROUPS = ("text_attn", "text_mlp", "o", "ln1", "ln2")
CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32", unfreeze=GROUPS)
FROZEN_CFG = CFG.replace(unfreeze=())
LAYOUT = (("text", 5), ("vision", 4))


def _batch(rng):
    text = rng.integers(0, 5000, (2, 5))
    codes = vocab.TEXT_VOCAB_SIZE + rng.integers(0, 64, (2, 3))
    tokens = np.concatenate([text, np.full((2, 1), vocab.IMAGE_START), codes], 1)
    valid = np.ones(tokens.shape, bool)
    return tokens, np.cumsum(valid, 1) - 1, valid


def _perturbed(trainable, scale=0.05):
    flat, unravel = jax.flatten_util.ravel_pytree(trainable["unfrozen_layers"])
    noise = scale * jax.random.normal(jax.random.key(3), flat.shape)
    return {**trainable, "unfrozen_layers": unravel(flat + noise)}


def test_unknown_or_repeated_group_is_a_clear_error():
    with pytest.raises(ValueError, match="ModelConfig.unfreeze.*text_head"):
        ModelConfig.tiny(unfreeze=("text_head",))
    with pytest.raises(ValueError, match="distinct"):
        ModelConfig.tiny(unfreeze=("o", "o"))
    assert ModelConfig.from_dict({**CFG.to_dict(), "unfreeze": list(GROUPS)}) == CFG


def test_shapes_and_axes_name_the_same_tree():
    shapes = params.trainable_shapes(CFG)
    assert set(shapes["unfrozen_layers"]) == set(GROUPS)
    assert shapes["unfrozen_layers"]["o"] == params.frozen_shapes(CFG)["layers"]["o"]
    axes = params.logical_axes(CFG)["trainable"]["unfrozen_layers"]
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x)
    ranks = jax.tree.map(len, shapes["unfrozen_layers"], is_leaf=is_shape)
    assert ranks == jax.tree.map(len, axes, is_leaf=params.is_axes_leaf)
    assert "unfrozen_layers" not in params.trainable_shapes(FROZEN_CFG)


def test_initial_copies_give_the_frozen_model_and_are_then_used():
    p = params.init_params(CFG, jax.random.key(0))
    frozen, trainable = p["frozen"], p["trainable"]
    tokens, positions, valid = _batch(np.random.default_rng(0))
    plain = {k: v for k, v in trainable.items() if k != "unfrozen_layers"}
    forward = jax.jit(mars.forward_hidden, static_argnums=(5, 6))
    h_frozen = forward(frozen, plain, tokens, positions, valid, LAYOUT, FROZEN_CFG)
    h_copies = forward(frozen, trainable, tokens, positions, valid, LAYOUT, CFG)
    np.testing.assert_array_equal(np.asarray(h_frozen), np.asarray(h_copies))
    h_changed = forward(frozen, _perturbed(trainable), tokens, positions, valid, LAYOUT, CFG)
    # The text positions change too: the copies replace the text expert, O and norms.
    assert np.abs(np.asarray(h_changed - h_copies))[:, :5].max() > 1e-3


def test_image_loss_trains_the_copies_not_the_frozen_tree():
    p = params.init_params(CFG, jax.random.key(0))
    tokens, positions, valid = _batch(np.random.default_rng(1))

    def image_loss(trainable, frozen):
        h = mars.forward_hidden(frozen, trainable, tokens, positions, valid, LAYOUT, CFG)
        return jnp.sum(h[:, 6:] ** 2)  # image positions only

    grads = jax.grad(image_loss, argnums=(0, 1))(p["trainable"], p["frozen"])
    for group in GROUPS:
        norms = jax.tree.leaves(jax.tree.map(jnp.linalg.norm, grads[0]["unfrozen_layers"][group]))
        assert max(float(n) for n in norms) > 0, group


def test_cached_decoding_uses_the_copies():
    p = params.init_params(CFG, jax.random.key(0))
    frozen, trainable = p["frozen"], _perturbed(p["trainable"])
    tokens, positions, valid = _batch(np.random.default_rng(2))
    full = mars.forward_logits(frozen, trainable, tokens, positions, valid, LAYOUT, CFG)
    prompt = 6  # text + <img>
    weights = decoder.prepare(frozen, trainable, CFG, None, str(CFG.compute_dtype))
    cache = decoder.init_cache(CFG, 2, tokens.shape[1], weights.compute_dtype)
    h, cache = decoder.prefill(
        weights, cache, tokens[:, :prompt], positions[:, :prompt], valid[:, :prompt], CFG, 5
    )
    logits = decoder.all_logits(weights, h[:, -1], CFG)
    np.testing.assert_allclose(logits, full[:, prompt - 1], rtol=1e-4, atol=1e-4)
    for i in range(prompt, tokens.shape[1]):
        h, cache = decoder.extend(
            weights, cache, tokens[:, i : i + 1], positions[:, i : i + 1], valid[:, i : i + 1],
            i, CFG,
        )  # fmt: skip
        logits = decoder.all_logits(weights, h[:, -1], CFG)
        np.testing.assert_allclose(logits, full[:, i], rtol=1e-4, atol=1e-4)


def test_training_run_updates_copies_and_keeps_frozen_bit_identical(tmp_path):
    c = stage1.get_config("tiny")
    c.model.unfreeze = ("text_attn", "o")
    c.model.image_logits = "vision_only"
    c.train.global_batch = 8
    c.train.num_steps = 2
    summary = loop.run(c, str(tmp_path))
    setup = loop.prepare(c)
    with jax.set_mesh(setup.mesh):
        fresh, _ = loop.load_frozen(setup)
    for a, b in zip(jax.tree.leaves(summary["frozen"]), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    trained = summary["state"]["trainable"]["unfrozen_layers"]
    start = fresh["layers"]["o"].astype(np.float32)
    assert np.abs(np.asarray(trained["o"]) - np.asarray(start)).max() > 0


def test_nktp_sampler_uses_the_copies():
    """The multi-token sampler (weights prepared once per call) decodes with the copies."""
    p = params.init_params(CFG, jax.random.key(0))
    frozen, trainable = p["frozen"], _perturbed(p["trainable"], scale=0.5)
    lo = np.random.default_rng(4).integers(0, 64, (2, 2, 2))
    sample = lambda f, t, cfg: nktp_sampling.sample_hires_codes(
        f, t, cfg, [[5, 6], [7]], lo, (2, 2), 1, "fast", text_len=3
    )[0]
    merged = mars.with_unfrozen(frozen, trainable)
    plain = {k: v for k, v in trainable.items() if k != "unfrozen_layers"}
    np.testing.assert_array_equal(sample(frozen, trainable, CFG), sample(merged, plain, FROZEN_CFG))
    assert not np.array_equal(sample(frozen, trainable, CFG), sample(frozen, plain, FROZEN_CFG))
