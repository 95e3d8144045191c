"""Batch-sharding hints: applied under a mesh, identity without; the chunked loss under a
mesh (chunks take tokens of every shard) equals the loss without one."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mars_jax.model import activation_sharding, loss, params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import vocab


def _mesh():
    """The trainer's kind of mesh (`train_lib.sharding.make_mesh`: Auto axes)."""
    auto = (jax.sharding.AxisType.Auto,) * 3
    return jax.make_mesh((1, 8, 1), ("data", "fsdp", "tensor"), axis_types=auto)


def test_tokens_hint_under_a_mesh_only():
    x = jnp.ones((16, 4))
    assert activation_sharding.num_shards() == 1
    assert activation_sharding.tokens(x) is x
    mesh = _mesh()
    with jax.set_mesh(mesh):
        assert activation_sharding.num_shards() == 8
        y = jax.jit(activation_sharding.tokens)(x)
        assert y.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None)), 2)
        odd = jnp.ones((12, 4))  # 12 rows do not split over 8 shards: left alone
        assert activation_sharding.tokens(odd) is odd


def test_chunked_loss_under_a_mesh_equals_without():
    cfg = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32", loss_chunk_size=24)
    p = params.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    n = 8 * 13  # 13 tokens per shard: ragged chunks
    h = jnp.asarray(rng.normal(size=(n, cfg.width)), jnp.float32)
    targets = jnp.asarray(vocab.code_to_token(rng.integers(0, 100, n)), jnp.int32)
    weights = jnp.asarray(rng.random(n) < 0.7, jnp.float32)

    def f(h, vision_head, frozen):
        tr = {"vision_head": vision_head}
        return loss.chunked_loss_sum(frozen, tr, h, targets, weights, loss.FULL, cfg)

    grad = jax.value_and_grad(f, argnums=(0, 1))
    want = jax.jit(grad)(h, p["trainable"]["vision_head"], p["frozen"])
    mesh = _mesh()
    with jax.set_mesh(mesh):
        hs = jax.device_put(h, NamedSharding(mesh, P(("data", "fsdp"), None)))
        got = jax.jit(grad)(hs, p["trainable"]["vision_head"], p["frozen"])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))
