"""Gradient accumulation combines micro-batches by tokens: equals one pass over the batch."""

import functools

import jax
import jax.flatten_util
import numpy as np

from mars_jax.model import loss, params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import layout as L
from mars_jax.tokens import vocab
from mars_jax.train_lib import step

CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32", num_layers=1)
TEXT_T, CODES = 8, 4
LAYOUTS = (("caption", L.caption(TEXT_T, CODES)),)


def _captions(caption_lengths):
    """`<img> codes <end> text <eot> PAD...` rows whose captions have the given lengths."""
    rng = np.random.default_rng(0)
    b = len(caption_lengths)
    codes = vocab.code_to_token(rng.integers(0, vocab.NUM_IMAGE_CODES, (b, CODES)))
    col = lambda v: np.full((b, 1), v)
    text = rng.integers(0, 5000, (b, TEXT_T))
    valid = np.ones((b, CODES + 2 + TEXT_T), bool)
    for row, n in enumerate(caption_lengths):
        text[row, n - 1] = vocab.ENDOFTEXT
        text[row, n:] = vocab.PAD
        valid[row, CODES + 2 + n :] = False
    tokens = np.concatenate([col(vocab.IMAGE_START), codes, col(vocab.IMAGE_END), text], 1)
    targets = np.concatenate([tokens[:, 1:], col(vocab.PAD)], 1)
    loss_mask = np.zeros(tokens.shape, np.float32)
    loss_mask[:, CODES + 1 : -1] = 1.0
    loss_mask *= valid & np.concatenate([valid[:, 1:], col(False)], 1)
    positions = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    return {
        "caption": {
            "tokens": tokens,
            "positions": positions,
            "valid": valid,
            "targets": targets,
            "loss_mask": loss_mask,
        }
    }


def test_accumulated_gradients_equal_one_big_batch():
    p = jax.jit(params.init_params, static_argnums=0)(CFG, jax.random.key(0))
    loss_fn = lambda frozen, trainable, batch: loss.total_loss(
        frozen, trainable, batch, LAYOUTS, CFG
    )
    # Micro-batch a takes rows a, a + 2, ...: micro-batch 0 has 1- and 2-token captions,
    # micro-batch 1 has 8- and 7-token ones, so a mean of micro-batch means is off.
    batch = _captions([1, 8, 2, 7])

    @functools.partial(jax.jit, static_argnums=0)
    def run(accum, trainable, frozen):
        return step.loss_and_grads(loss_fn, trainable, frozen, batch, accum)

    loss1, metrics1, grads1 = run(1, p["trainable"], p["frozen"])
    loss2, metrics2, grads2 = run(2, p["trainable"], p["frozen"])
    np.testing.assert_allclose(loss2, loss1, rtol=1e-5)
    np.testing.assert_allclose(metrics2["caption/loss"], metrics1["caption/loss"], rtol=1e-5)
    assert float(metrics2["tokens"]) == float(metrics1["tokens"]) == float(1 + 8 + 2 + 7)
    flat1 = jax.flatten_util.ravel_pytree(grads1)[0]
    flat2 = jax.flatten_util.ravel_pytree(grads2)[0]
    assert float(np.abs(flat2 - flat1).max()) <= 1e-5 * float(np.abs(flat1).max())
    # The mean of the two micro-batches' mean losses is not the batch's token mean.
    halves = [jax.tree.map(lambda x, a=a: x[a::2], batch) for a in (0, 1)]
    means = [loss_fn(p["frozen"], p["trainable"], h)[0] for h in halves]
    assert abs(float(np.mean(means)) - float(loss1)) > 1e-3


def test_checkpoint_of_earlier_version_with_rng_restores(tmp_path):
    """The state holds no RNG any more (nothing in the step is random); an older checkpoint
    that stored one restores, the RNG dropped."""
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from mars_jax.train_lib import checkpoint, state

    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    tx = optax.adam(1e-3)
    trainable = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    rep = NamedSharding(mesh, P())
    abstract = state.abstract_state(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trainable), tx
    )
    assert "rng" not in abstract
    shardings = state.state_shardings(abstract, {"w": rep}, tx, mesh)
    fresh = state.jit_init_state(tx, shardings)(trainable)
    old = {**fresh, "rng": np.array([0, 42], np.uint32)}
    manager = checkpoint.make_manager(str(tmp_path), 1, 0, False)
    checkpoint.save(manager, 3, old, None, {}, {}, force=True)
    manager.wait_until_finished()
    manager.close()
    # A new manager, as a resumed run opens one: it knows the saved keys from disk only.
    manager = checkpoint.make_manager(str(tmp_path), 1, 0, False)
    restored = checkpoint.restore(manager, 3, abstract, shardings, None)
    assert set(restored) == set(fresh)
    np.testing.assert_array_equal(restored["trainable"]["w"], trainable["w"])


def test_task_weights_weigh_each_tasks_tokens_also_under_accumulation():
    """`train.task_weights`: the loss is sum_t w_t S_t / sum_t w_t N_t, and accumulation by
    the weighted token count still equals one pass over the batch."""
    p = jax.jit(params.init_params, static_argnums=0)(CFG, jax.random.key(0))
    layouts = LAYOUTS + (("t2i", L.caption(TEXT_T, CODES)),)
    batch = {
        "caption": _captions([1, 8, 2, 7])["caption"],
        "t2i": _captions([3, 5, 8, 2])["caption"],
    }
    weights = (("caption", 4.0), ("t2i", 1.0))

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def run(accum, task_weights, trainable, frozen):
        loss_fn = lambda frozen, t, b: loss.total_loss(frozen, t, b, layouts, CFG, task_weights)
        return step.loss_and_grads(loss_fn, trainable, frozen, batch, accum)

    loss1, metrics1, grads1 = run(1, weights, p["trainable"], p["frozen"])
    loss2, metrics2, grads2 = run(2, weights, p["trainable"], p["frozen"])
    sums = {t: float(metrics1[f"{t}/loss"]) * float(metrics1[f"{t}/tokens"]) for t in batch}
    tokens = {t: float(metrics1[f"{t}/tokens"]) for t in batch}
    expected = (4 * sums["caption"] + sums["t2i"]) / (4 * tokens["caption"] + tokens["t2i"])
    np.testing.assert_allclose(loss1, expected, rtol=1e-5)
    np.testing.assert_allclose(loss2, loss1, rtol=1e-5)
    assert float(metrics2["tokens"]) == float(metrics1["tokens"]) == sum(tokens.values())
    assert float(metrics2["loss_weight"]) == 4 * tokens["caption"] + tokens["t2i"]
    flat1 = jax.flatten_util.ravel_pytree(grads1)[0]
    flat2 = jax.flatten_util.ravel_pytree(grads2)[0]
    assert float(np.abs(flat2 - flat1).max()) <= 1e-5 * float(np.abs(flat1).max())
    # The weights matter here: the plain token mean differs.
    assert abs(sum(sums.values()) / sum(tokens.values()) - float(loss1)) > 1e-3
