"""The optimizers of `optim.name`: Muon orthogonalises each layer's matrices and leaves the
rest to AdamW; its state shards like the parameters (a Muon run's checkpoint and resume:
tests/test_train_loop.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.common import optim_config
from mars_jax.model import params
from mars_jax.model.config import ModelConfig
from mars_jax.train_lib import state

CFG = ModelConfig.tiny(unfreeze=("text_attn", "text_mlp", "o", "ln1"))
# Independent of `state.MUON_AXES`: each weight as the matrix `x @ W` multiplies, per layer.
MATRIX_VIEW = {
    "q": lambda w: w.reshape(w.shape[0], -1),  # [D, H*Dh]
    "k": lambda w: w.reshape(w.shape[0], -1),
    "v": lambda w: w.reshape(w.shape[0], -1),
    "o": lambda w: w.reshape(-1, w.shape[-1]),  # [H*Dh, D]
    "gate": lambda w: w,
    "up": lambda w: w,
    "down": lambda w: w,
}


def optim(name: str, weight_decay: float = 0.0, **more) -> ml_collections.ConfigDict:
    """The project's `optim` section at a constant learning rate of 1 and no clipping: the
    update is the direction alone."""
    c = optim_config(peak_lr=1.0, warmup_ratio=0.0)
    c.update(dict(name=name, end_lr_ratio=1.0, weight_decay=weight_decay, grad_clip=0.0, **more))
    return c


def random_tree(seed: int, low_rank: bool = False) -> dict:
    """Random values of the trainable shapes; `low_rank`: one dominant direction per matrix
    (a gradient whose plain update would be nearly rank one)."""
    shapes = params.trainable_shapes(CFG)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    rng = np.random.default_rng(seed)
    out = []
    for shape in leaves:
        x = rng.normal(size=shape).astype(np.float32)
        if low_rank and len(shape) >= 3:  # [layers, a, rest...]: 3 u(a) v(rest) + noise
            u = rng.normal(size=shape[:2] + (1,) * (len(shape) - 2))
            v = rng.normal(size=(shape[0], 1) + shape[2:])
            x = (x + 3.0 * u * v).astype(np.float32)
        out.append(jnp.asarray(x))
    return jax.tree.unflatten(treedef, out)


def paths_and_leaves(tree: dict) -> list[tuple[list[str], jax.Array]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [([k.key for k in path], leaf) for path, leaf in flat]


def test_muon_orthogonalises_every_layer_matrix():
    trainable, grads = random_tree(0), random_tree(1, low_rank=True)
    tx, _ = state.make_optimizer(optim("muon"), num_steps=10)
    updates, _ = tx.update(grads, tx.init(trainable), trainable)
    seen = set()
    for keys, update in paths_and_leaves(updates):
        name = keys[-1]
        if name not in MATRIX_VIEW:
            continue
        seen.add(name)
        for layer in range(CFG.num_layers):
            matrix = np.asarray(MATRIX_VIEW[name](update[layer]))
            singular = np.linalg.svd(matrix, compute_uv=False)
            # Newton-Schulz brings the singular values to one scale (the smallest of a
            # square random matrix stay small): no direction dominates.
            assert singular.max() / np.median(singular) < 2.0, (keys, layer, singular)
    assert seen == set(MATRIX_VIEW)


def test_muon_gradient_of_one_direction_is_spread_over_all():
    """The plain (AdamW) update of a rank-one gradient keeps its one direction; Muon's does
    not: a check that the test above can tell the two apart."""
    trainable, grads = random_tree(0), random_tree(1, low_rank=True)
    for name, flat in (("adamw", False), ("muon", True)):
        tx, _ = state.make_optimizer(optim(name), num_steps=10)
        updates, _ = tx.update(grads, tx.init(trainable), trainable)
        gate = np.asarray(updates["layers"]["vision_mlp"]["gate"][0])
        singular = np.linalg.svd(gate, compute_uv=False)
        assert (singular.max() / np.median(singular) < 2.0) == flat, (name, singular)


def test_muon_leaves_embeddings_heads_biases_and_norms_to_adamw():
    """As optax's Nesterov AdamW, with weight decay on the embeddings and heads only."""
    trainable, grads = random_tree(0), random_tree(1)
    muon_tx, _ = state.make_optimizer(optim("muon", weight_decay=0.1), num_steps=10)
    decays = lambda tree: state.decay_mask(tree, ("bias", "ln", "norm"))
    adamw_tx = optax.adamw(
        1.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=decays, nesterov=True
    )
    muon_state, adamw_state = muon_tx.init(trainable), adamw_tx.init(trainable)
    for _ in range(2):  # the second step reads the moments the first one wrote
        muon_updates, muon_state = muon_tx.update(grads, muon_state, trainable)
        adamw_updates, adamw_state = adamw_tx.update(grads, adamw_state, trainable)
    adam_leaves = 0
    for (keys, muon_u), (_, adamw_u) in zip(
        paths_and_leaves(muon_updates), paths_and_leaves(adamw_updates), strict=True
    ):
        if keys[-1] in MATRIX_VIEW:
            assert not np.allclose(muon_u, adamw_u, atol=1e-3), keys
        else:
            adam_leaves += 1
            np.testing.assert_allclose(muon_u, adamw_u, rtol=1e-5, atol=1e-7, err_msg=str(keys))
    assert adam_leaves >= 8  # embeddings, head, positions, biases, norm scales


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_optimizer_state_shards_like_its_parameters(name):
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))
    trainable = random_tree(0)
    # The layer axis replicated, the next one (width or heads) sharded where it divides.
    spec = lambda x: P(None, "fsdp") if x.ndim >= 2 and x.shape[1] % 8 == 0 else P()
    shardings = jax.tree.map(lambda x: NamedSharding(mesh, spec(x)), trainable)
    tx, _ = state.make_optimizer(optim(name), num_steps=10)
    abstract = state.abstract_state(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trainable), tx
    )
    all_shardings = state.state_shardings(abstract, shardings, tx, mesh)
    train_state = state.jit_init_state(tx, all_shardings)(trainable)
    by_path = {
        jax.tree_util.keystr(p): s.sharding.spec
        for p, s in jax.tree_util.tree_flatten_with_path(train_state["trainable"])[0]
    }
    moments = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(train_state["opt_state"])[0]:
        text = jax.tree_util.keystr(path)
        owner = [p for p in by_path if text.endswith(p)]
        if not owner:  # counts, Newton-Schulz coefficients
            assert leaf.sharding.spec == P(), text
            continue
        moments += 1
        assert len(owner) == 1 and leaf.sharding.spec == by_path[owner[0]], text
    matrices = sum(1 for keys, _ in paths_and_leaves(trainable) if keys[-1] in MATRIX_VIEW)
    # AdamW keeps two moments of every leaf; Muon one momentum of each matrix.
    leaves = len(by_path)
    assert moments == (2 * leaves if name == "adamw" else 2 * leaves - matrices)


def test_muon_groups_choose_which_subtrees_muon_trains():
    """`optim.muon_groups=("layers",)`: the vision expert by Muon, the LLM copies by AdamW."""
    trainable, grads = random_tree(0), random_tree(1, low_rank=True)
    tx, _ = state.make_optimizer(optim("muon", muon_groups=("layers",)), num_steps=10)
    adamw = optax.adamw(1.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, nesterov=True)
    updates, _ = tx.update(grads, tx.init(trainable), trainable)
    reference, _ = adamw.update(grads, adamw.init(trainable), trainable)
    for (keys, u), (_, r) in zip(
        paths_and_leaves(updates), paths_and_leaves(reference), strict=True
    ):
        if keys[0] == "layers" and keys[-1] in MATRIX_VIEW:
            assert not np.allclose(u, r, atol=1e-3), keys
        else:
            np.testing.assert_allclose(u, r, rtol=1e-5, atol=1e-7, err_msg=str(keys))
