"""PatchGAN discriminator for the optional adversarial VQ-GAN loss (taming's NLayerDiscriminator).

4×4 convolutions, stride 2 for the first ``num_layers`` of them, LeakyReLU(0.2), one logit per
patch. Taming normalises with BatchNorm; here GroupNorm takes its place, so the discriminator
stays a pure function of ``(params, images)`` with no batch statistics to carry.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Params = dict


@dataclasses.dataclass(frozen=True)
class DiscConfig:
    in_channels: int = 3
    base_channels: int = 64
    num_layers: int = 3
    norm_groups: int = 32


class PatchGAN(nnx.Module):
    def __init__(self, cfg: DiscConfig, rngs: nnx.Rngs):
        def conv(c_in, c_out, stride):
            return nnx.Conv(
                c_in, c_out, (4, 4), strides=stride, padding=((1, 1), (1, 1)), rngs=rngs
            )

        chans = [cfg.base_channels * min(2**i, 8) for i in range(cfg.num_layers + 1)]
        self.conv_in = conv(cfg.in_channels, chans[0], 2)
        layers, norms = [], []
        for i in range(1, cfg.num_layers + 1):
            stride = 2 if i < cfg.num_layers else 1
            layers.append(conv(chans[i - 1], chans[i], stride))
            norms.append(nnx.GroupNorm(chans[i], num_groups=cfg.norm_groups, rngs=rngs))
        self.layers = nnx.List(layers)
        self.norms = nnx.List(norms)
        self.conv_out = conv(chans[-1], 1, 1)

    def __call__(self, images_NxHxWxC: jax.Array) -> jax.Array:
        x = nnx.leaky_relu(self.conv_in(images_NxHxWxC), 0.2)
        for conv, norm in zip(self.layers, self.norms, strict=True):
            x = nnx.leaky_relu(norm(conv(x)), 0.2)
        return self.conv_out(x)[..., 0]


@functools.lru_cache(maxsize=8)
def _abstract(cfg: DiscConfig):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: PatchGAN(cfg, nnx.Rngs(0))))
    shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(state))
    return graphdef, shapes


def init(cfg: DiscConfig, rng: jax.Array) -> Params:
    """N(0, 0.02) kernels, unit norm scales, zero biases (taming's weights_init)."""
    seed = [int(x) for x in np.asarray(jax.random.key_data(rng)).ravel()]
    np_rng = np.random.default_rng(seed)

    def draw(path, spec):
        leaf = str(getattr(path[-1], "key", path[-1]))
        if leaf == "kernel":
            value = 0.02 * np_rng.standard_normal(spec.shape)
        elif leaf == "scale":
            value = np.ones(spec.shape)
        else:
            value = np.zeros(spec.shape)
        return jnp.asarray(value, spec.dtype)

    return jax.tree_util.tree_map_with_path(draw, _abstract(cfg)[1])


def apply(params: Params, cfg: DiscConfig, images_NxHxWxC: jax.Array) -> jax.Array:
    """Patch logits ``[N, h', w']`` (positive: real)."""
    return nnx.merge(_abstract(cfg)[0], params)(images_NxHxWxC)


def hinge_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    return 0.5 * (
        jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake))
    )
