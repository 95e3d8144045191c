"""Taming-style VQ-GAN in Flax NNX (NHWC), exposed as pure functions over a params pytree.

The NNX modules mirror taming-transformers' ``Encoder``/``Decoder``/``VectorQuantizer2``
(attribute names included: ``encoder.down[i].block[j].norm1``, ``quantize.embedding`` …), so
checkpoint import is a rename of leaves plus OIHW→HWIO transposes. Callers never see modules:
``params`` is a plain nested dict (``nnx.to_pure_dict``), merged with a graph definition
cached per config inside the traced function, so ``encode``/``decode`` are ordinary jitted
functions of ``(params, images)`` with the config static.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mars_jax.vq.config import VQConfig

Params = dict[str, Any]


def _norm(channels: int, cfg: VQConfig, rngs: nnx.Rngs) -> nnx.GroupNorm:
    # Exact two-pass variance, as torch.nn.GroupNorm computes it.
    return nnx.GroupNorm(
        channels, num_groups=cfg.norm_groups, epsilon=1e-6, use_fast_variance=False, rngs=rngs
    )


def _conv(c_in: int, c_out: int, k: int, rngs: nnx.Rngs, stride: int = 1, padding="SAME"):
    return nnx.Conv(c_in, c_out, (k, k), strides=stride, padding=padding, rngs=rngs)


class ResnetBlock(nnx.Module):
    def __init__(self, c_in: int, c_out: int, cfg: VQConfig, rngs: nnx.Rngs):
        self.norm1 = _norm(c_in, cfg, rngs)
        self.conv1 = _conv(c_in, c_out, 3, rngs)
        self.norm2 = _norm(c_out, cfg, rngs)
        self.conv2 = _conv(c_out, c_out, 3, rngs)
        self.nin_shortcut = _conv(c_in, c_out, 1, rngs) if c_in != c_out else None

    def __call__(self, x_NxHxWxC: jax.Array) -> jax.Array:
        h = self.conv1(nnx.swish(self.norm1(x_NxHxWxC)))
        h = self.conv2(nnx.swish(self.norm2(h)))
        skip = x_NxHxWxC if self.nin_shortcut is None else self.nin_shortcut(x_NxHxWxC)
        return skip + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over all spatial positions (q, k, v, out: 1×1 projections)."""

    def __init__(self, channels: int, cfg: VQConfig, rngs: nnx.Rngs):
        self.norm = _norm(channels, cfg, rngs)
        self.q = nnx.Linear(channels, channels, rngs=rngs)
        self.k = nnx.Linear(channels, channels, rngs=rngs)
        self.v = nnx.Linear(channels, channels, rngs=rngs)
        self.proj_out = nnx.Linear(channels, channels, rngs=rngs)

    def __call__(self, x_NxHxWxC: jax.Array) -> jax.Array:
        n, h, w, c = x_NxHxWxC.shape
        y_NxLxC = self.norm(x_NxHxWxC).reshape(n, h * w, c)
        q, k, v = self.q(y_NxLxC), self.k(y_NxLxC), self.v(y_NxLxC)
        weights_NxLxL = jax.nn.softmax(jnp.einsum("nqc,nkc->nqk", q, k) * c**-0.5, axis=-1)
        out_NxLxC = self.proj_out(jnp.einsum("nqk,nkc->nqc", weights_NxLxL, v))
        return x_NxHxWxC + out_NxLxC.reshape(n, h, w, c)


class Downsample(nnx.Module):
    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv = _conv(channels, channels, 3, rngs, stride=2, padding="VALID")

    def __call__(self, x_NxHxWxC: jax.Array) -> jax.Array:
        # Taming pads right/bottom by one, then a stride-2 valid conv.
        return self.conv(jnp.pad(x_NxHxWxC, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv = _conv(channels, channels, 3, rngs)

    def __call__(self, x_NxHxWxC: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x_NxHxWxC, 2, axis=1), 2, axis=2)  # nearest neighbour ×2
        return self.conv(x)


class Level(nnx.Module):
    """One resolution level: ResNet blocks, each optionally followed by attention; resampling."""

    def __init__(self, c_in, c_out, num_blocks, attention, resample, cfg: VQConfig, rngs):
        blocks, attns = [], []
        for _ in range(num_blocks):
            blocks.append(ResnetBlock(c_in, c_out, cfg, rngs))
            c_in = c_out
            if attention:
                attns.append(AttnBlock(c_out, cfg, rngs))
        self.block = nnx.List(blocks)
        self.attn = nnx.List(attns)
        self.downsample = Downsample(c_out, rngs) if resample == "down" else None
        self.upsample = Upsample(c_out, rngs) if resample == "up" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class MidBlock(nnx.Module):
    def __init__(self, channels: int, cfg: VQConfig, rngs: nnx.Rngs):
        self.block_1 = ResnetBlock(channels, channels, cfg, rngs)
        self.attn_1 = AttnBlock(channels, cfg, rngs) if cfg.mid_attention else None
        self.block_2 = ResnetBlock(channels, channels, cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.block_1(x)
        if self.attn_1 is not None:
            x = self.attn_1(x)
        return self.block_2(x)


class Encoder(nnx.Module):
    def __init__(self, cfg: VQConfig, rngs: nnx.Rngs):
        chans = cfg.level_channels
        n_levels = len(chans)
        self.conv_in = _conv(cfg.in_channels, cfg.base_channels, 3, rngs)
        levels, c_in = [], cfg.base_channels
        for i, c_out in enumerate(chans):
            resample = "down" if i != n_levels - 1 else None
            levels.append(
                Level(c_in, c_out, cfg.num_res_blocks, cfg.has_attention(i), resample, cfg, rngs)
            )
            c_in = c_out
        self.down = nnx.List(levels)
        self.mid = MidBlock(chans[-1], cfg, rngs)
        self.norm_out = _norm(chans[-1], cfg, rngs)
        self.conv_out = _conv(chans[-1], cfg.z_channels, 3, rngs)

    def __call__(self, images_NxHxWxC: jax.Array) -> jax.Array:
        x = self.conv_in(images_NxHxWxC)
        for level in self.down:
            x = level(x)
        x = self.mid(x)
        return self.conv_out(nnx.swish(self.norm_out(x)))


class Decoder(nnx.Module):
    def __init__(self, cfg: VQConfig, rngs: nnx.Rngs):
        chans = cfg.level_channels
        self.conv_in = _conv(cfg.z_channels, chans[-1], 3, rngs)
        self.mid = MidBlock(chans[-1], cfg, rngs)
        # ``up[i]`` works at level i's resolution, as in taming; it runs from the last level down.
        levels, c_in = {}, chans[-1]
        for i in reversed(range(len(chans))):
            resample = "up" if i != 0 else None
            levels[i] = Level(
                c_in, chans[i], cfg.num_res_blocks + 1, cfg.has_attention(i), resample, cfg, rngs
            )
            c_in = chans[i]
        self.up = nnx.List([levels[i] for i in range(len(chans))])
        self.norm_out = _norm(chans[0], cfg, rngs)
        self.conv_out = _conv(chans[0], cfg.in_channels, 3, rngs)

    def __call__(self, z_NxhxwxZ: jax.Array) -> jax.Array:
        x = self.mid(self.conv_in(z_NxhxwxZ))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(nnx.swish(self.norm_out(x)))


class Quantizer(nnx.Module):
    def __init__(self, cfg: VQConfig, rngs: nnx.Rngs):
        k = cfg.codebook_size
        init = jax.random.uniform(
            rngs.params(), (k, cfg.embed_dim), minval=-1.0 / k, maxval=1.0 / k
        )
        self.embedding = nnx.Param(init)


class VQGAN(nnx.Module):
    def __init__(self, cfg: VQConfig, rngs: nnx.Rngs):
        self.encoder = Encoder(cfg, rngs)
        self.quant_conv = _conv(cfg.z_channels, cfg.embed_dim, 1, rngs)
        self.quantize = Quantizer(cfg, rngs)
        self.post_quant_conv = _conv(cfg.embed_dim, cfg.z_channels, 1, rngs)
        self.decoder = Decoder(cfg, rngs)


# --------------------------------------------------------------------------- pure functions


@functools.lru_cache(maxsize=16)
def _abstract(cfg: VQConfig) -> tuple[nnx.GraphDef, Params]:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: VQGAN(cfg, nnx.Rngs(0))))
    shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(state))
    return graphdef, shapes


def _graphdef(cfg: VQConfig) -> nnx.GraphDef:
    return _abstract(cfg)[0]


def _module(params: Params, cfg: VQConfig) -> VQGAN:
    return nnx.merge(_graphdef(cfg), params)


def init(cfg: VQConfig, rng: jax.Array) -> Params:
    """Random parameters as a nested dict of arrays.

    Drawn with numpy from the key's bits: LeCun-normal kernels, zero biases, unit norm scales and
    a U(±1/K) codebook (as taming). Eager NNX init compiles op by op and a jitted one compiles
    hundreds of RNG ops, either of which takes many seconds on CPU; this takes milliseconds.
    """
    seed = np.asarray(jax.random.key_data(rng)).ravel()
    np_rng = np.random.default_rng([int(x) for x in seed])

    def draw(path, spec):
        leaf = str(getattr(path[-1], "key", path[-1]))
        if leaf == "kernel":
            fan_in = int(np.prod(spec.shape[:-1]))
            value = np_rng.standard_normal(spec.shape) / np.sqrt(fan_in)
        elif leaf == "scale":
            value = np.ones(spec.shape)
        elif leaf == "embedding":
            k = cfg.codebook_size
            value = np_rng.uniform(-1.0 / k, 1.0 / k, spec.shape)
        else:
            value = np.zeros(spec.shape)
        return jnp.asarray(value, dtype=spec.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(cfg))


def abstract_params(cfg: VQConfig) -> Params:
    """The parameter tree as ``jax.ShapeDtypeStruct`` leaves (no allocation)."""
    return jax.tree.map(lambda s: s, _abstract(cfg)[1])  # a fresh tree of the cached leaves


def encode_latents(params: Params, cfg: VQConfig, images_NxHxWx3: jax.Array) -> jax.Array:
    """Pre-quantisation latents ``[N, h, w, embed_dim]`` (encoder → quant_conv)."""
    m = _module(params, cfg)
    if not cfg.patch_encoder:
        return m.quant_conv(m.encoder(images_NxHxWx3))
    n, height, width, c = images_NxHxWx3.shape
    f = cfg.downsample_factor
    h, w = height // f, width // f
    patches_MxfxfxC = (
        images_NxHxWx3.reshape(n, h, f, w, f, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, f, f, c)
    )
    z_Mx1x1xD = m.quant_conv(m.encoder(patches_MxfxfxC))
    return z_Mx1x1xD.reshape(n, h, w, z_Mx1x1xD.shape[-1])


def quantize(params: Params, cfg: VQConfig, z_NxhxwxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest codebook entry per position: ``(codes_Nxhxw int32, z_q_NxhxwxD)``."""
    codebook_KxD = params["quantize"]["embedding"]
    z_MxD = z_NxhxwxD.reshape(-1, z_NxhxwxD.shape[-1])
    dist_MxK = (
        jnp.sum(z_MxD**2, axis=1, keepdims=True)
        - 2.0 * jnp.dot(z_MxD, codebook_KxD.T, precision=jax.lax.Precision.HIGHEST)
        + jnp.sum(codebook_KxD**2, axis=1)[None, :]
    )
    codes = jnp.argmin(dist_MxK, axis=1).astype(jnp.int32).reshape(z_NxhxwxD.shape[:-1])
    return codes, codebook_KxD[codes]


def lookup(params: Params, codes_Nxhxw: jax.Array) -> jax.Array:
    """Codebook vectors of ``codes`` → ``[N, h, w, embed_dim]``."""
    return params["quantize"]["embedding"][codes_Nxhxw]


def decode_latents(params: Params, cfg: VQConfig, z_q_NxhxwxD: jax.Array) -> jax.Array:
    """Quantised latents → images in roughly [-1, 1] (not clipped, for training losses)."""
    m = _module(params, cfg)
    return m.decoder(m.post_quant_conv(z_q_NxhxwxD))


def _check_images(cfg: VQConfig, images: jax.Array) -> None:
    if images.ndim != 4 or images.shape[-1] != cfg.in_channels:
        raise ValueError(f"expected images [N, H, W, {cfg.in_channels}], got {images.shape}")
    f = cfg.downsample_factor
    if images.shape[1] % f or images.shape[2] % f:
        raise ValueError(f"image size {images.shape[1:3]} is not a multiple of the VQ factor {f}")


@functools.partial(jax.jit, static_argnames="cfg")
def encode(params: Params, cfg: VQConfig, images_NxHxWx3: jax.Array) -> jax.Array:
    """Images in [-1, 1] → codes ``[N, H/f, W/f]`` int32."""
    _check_images(cfg, images_NxHxWx3)
    z = encode_latents(params, cfg, images_NxHxWx3.astype(jnp.float32))
    return quantize(params, cfg, z)[0]


@functools.partial(jax.jit, static_argnames="cfg")
def decode(params: Params, cfg: VQConfig, codes_Nxhxw: jax.Array) -> jax.Array:
    """Codes ``[N, h, w]`` → images ``[N, h·f, w·f, 3]`` clipped to [-1, 1]."""
    return jnp.clip(decode_latents(params, cfg, lookup(params, codes_Nxhxw)), -1.0, 1.0)
