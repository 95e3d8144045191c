"""The FID Inception-v3 (pool3, 2048-d) in JAX: pure functions over a params pytree.

This is the network of pytorch-fid's ``InceptionV3`` with ``use_fid_inception=True`` (the
TensorFlow ``inception-2015-12-05`` graph that defines FID, ported to PyTorch as
``pt_inception-2015-12-05-*.pth``): torchvision's Inception-v3 topology with the FID
patches — average pools in the A/C/E blocks ignore padded zeros
(``count_include_pad=False``) and the last E block max-pools its pool branch.

Input protocol (pytorch-fid's): uint8 RGB images → [0, 1] → bilinear resize to 299 × 299
(``F.interpolate(mode="bilinear", align_corners=False)``, no antialiasing) → ``2x - 1`` →
network → global average pool → [N, 2048].

Weights: ``load_params`` reads a converted ``.npz`` / ``.safetensors`` without torch, or
the original ``.pth`` state dict when torch is installed (torch is never a runtime
dependency; ``python -m mars_jax.eval.convert_weights inception in.pth out.npz`` converts
once). Every BasicConv2d is ``conv (no bias) → BatchNorm(eps=1e-3, eval) → ReLU``; the
loader folds BatchNorm into a per-channel ``scale``/``shift`` and keeps the conv kernel as
HWIO. The forward reads channel counts from the params, so ``init_params(width=...)``
builds a narrower random network of the same topology for fast tests.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.eval import weights

RESIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3

# (name, in, out, (kh, kw), stride, (ph, pw)) of every BasicConv2d, in torchvision's names.
_Conv = tuple[str, int, int, tuple[int, int], int, tuple[int, int]]


def _a(name: str, cin: int, pool: int) -> list[_Conv]:
    return [
        (f"{name}.branch1x1", cin, 64, (1, 1), 1, (0, 0)),
        (f"{name}.branch5x5_1", cin, 48, (1, 1), 1, (0, 0)),
        (f"{name}.branch5x5_2", 48, 64, (5, 5), 1, (2, 2)),
        (f"{name}.branch3x3dbl_1", cin, 64, (1, 1), 1, (0, 0)),
        (f"{name}.branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1)),
        (f"{name}.branch3x3dbl_3", 96, 96, (3, 3), 1, (1, 1)),
        (f"{name}.branch_pool", cin, pool, (1, 1), 1, (0, 0)),
    ]


def _b(name: str, cin: int) -> list[_Conv]:
    return [
        (f"{name}.branch3x3", cin, 384, (3, 3), 2, (0, 0)),
        (f"{name}.branch3x3dbl_1", cin, 64, (1, 1), 1, (0, 0)),
        (f"{name}.branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1)),
        (f"{name}.branch3x3dbl_3", 96, 96, (3, 3), 2, (0, 0)),
    ]


def _c(name: str, cin: int, c7: int) -> list[_Conv]:
    return [
        (f"{name}.branch1x1", cin, 192, (1, 1), 1, (0, 0)),
        (f"{name}.branch7x7_1", cin, c7, (1, 1), 1, (0, 0)),
        (f"{name}.branch7x7_2", c7, c7, (1, 7), 1, (0, 3)),
        (f"{name}.branch7x7_3", c7, 192, (7, 1), 1, (3, 0)),
        (f"{name}.branch7x7dbl_1", cin, c7, (1, 1), 1, (0, 0)),
        (f"{name}.branch7x7dbl_2", c7, c7, (7, 1), 1, (3, 0)),
        (f"{name}.branch7x7dbl_3", c7, c7, (1, 7), 1, (0, 3)),
        (f"{name}.branch7x7dbl_4", c7, c7, (7, 1), 1, (3, 0)),
        (f"{name}.branch7x7dbl_5", c7, 192, (1, 7), 1, (0, 3)),
        (f"{name}.branch_pool", cin, 192, (1, 1), 1, (0, 0)),
    ]


def _d(name: str, cin: int) -> list[_Conv]:
    return [
        (f"{name}.branch3x3_1", cin, 192, (1, 1), 1, (0, 0)),
        (f"{name}.branch3x3_2", 192, 320, (3, 3), 2, (0, 0)),
        (f"{name}.branch7x7x3_1", cin, 192, (1, 1), 1, (0, 0)),
        (f"{name}.branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3)),
        (f"{name}.branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0)),
        (f"{name}.branch7x7x3_4", 192, 192, (3, 3), 2, (0, 0)),
    ]


def _e(name: str, cin: int) -> list[_Conv]:
    return [
        (f"{name}.branch1x1", cin, 320, (1, 1), 1, (0, 0)),
        (f"{name}.branch3x3_1", cin, 384, (1, 1), 1, (0, 0)),
        (f"{name}.branch3x3_2a", 384, 384, (1, 3), 1, (0, 1)),
        (f"{name}.branch3x3_2b", 384, 384, (3, 1), 1, (1, 0)),
        (f"{name}.branch3x3dbl_1", cin, 448, (1, 1), 1, (0, 0)),
        (f"{name}.branch3x3dbl_2", 448, 384, (3, 3), 1, (1, 1)),
        (f"{name}.branch3x3dbl_3a", 384, 384, (1, 3), 1, (0, 1)),
        (f"{name}.branch3x3dbl_3b", 384, 384, (3, 1), 1, (1, 0)),
        (f"{name}.branch_pool", cin, 192, (1, 1), 1, (0, 0)),
    ]


CONVS: list[_Conv] = [
    ("Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0)),
    ("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0)),
    ("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1)),
    ("Conv2d_3b_1x1", 64, 80, (1, 1), 1, (0, 0)),
    ("Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0)),
    *_a("Mixed_5b", 192, 32),
    *_a("Mixed_5c", 256, 64),
    *_a("Mixed_5d", 288, 64),
    *_b("Mixed_6a", 288),
    *_c("Mixed_6b", 768, 128),
    *_c("Mixed_6c", 768, 160),
    *_c("Mixed_6d", 768, 160),
    *_c("Mixed_6e", 768, 192),
    *_d("Mixed_7a", 768),
    *_e("Mixed_7b", 1280),
    *_e("Mixed_7c", 2048),
]
_SPEC = {c[0]: c for c in CONVS}
# State-dict entries the pool3 features do not use (the 1008-way classifier, BN counters).
_UNUSED_SUFFIXES = (".num_batches_tracked",)
_UNUSED_PREFIXES = ("fc.", "AuxLogits.")


# ---------------------------------------------------------------------------------------
# Params: random init, and conversion from a pytorch-fid state dict.


def init_params(seed: int = 0, width: float = 1.0) -> dict[str, dict[str, jax.Array]]:
    """Random params of the real topology; ``width`` < 1 scales every channel count (tests).

    Per conv: ``w_HxWxIxO`` (HWIO kernel), ``scale_O``, ``shift_O`` (folded BatchNorm).
    """

    def ch(c: int) -> int:
        return c if c == 3 else max(1, round(c * width))

    out_ch: dict[str, int] = {}
    block_in = {"Mixed_5b": ch(192)}
    params = {}
    rng = np.random.default_rng(seed)  # numpy: ~300 tiny jax.random calls take a minute
    for name, cin, cout, (kh, kw), _, _ in CONVS:
        block = name.split(".")[0]
        if block.startswith("Mixed") and block not in block_in:
            prev = _BLOCK_ORDER[_BLOCK_ORDER.index(block) - 1]
            block_in[block] = _block_width(prev, out_ch, block_in[prev])
        ci = block_in[block] if "." in name and _reads_input(name) else ch(cin)
        co = out_ch[name] = ch(cout)
        w = rng.normal(size=(kh, kw, ci, co)) * (2.0 / (kh * kw * ci)) ** 0.5
        params[name] = {
            "w_HxWxIxO": jnp.asarray(w, jnp.float32),
            "scale_O": jnp.asarray(1.0 + 0.1 * rng.normal(size=co), jnp.float32),
            "shift_O": jnp.asarray(0.1 * rng.normal(size=co), jnp.float32),
        }
    return params


_BLOCK_ORDER = [
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
]  # fmt: skip
_INPUT_CONVS = {
    "branch1x1", "branch5x5_1", "branch3x3dbl_1", "branch_pool", "branch3x3",
    "branch7x7_1", "branch7x7dbl_1", "branch3x3_1", "branch7x7x3_1",
}  # fmt: skip


def _reads_input(name: str) -> bool:
    return name.split(".", 1)[1] in _INPUT_CONVS


def _block_width(block: str, out_ch: dict[str, int], cin: int) -> int:
    def o(name: str) -> int:
        return out_ch[f"{block}.{name}"]

    if block in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        return o("branch1x1") + o("branch5x5_2") + o("branch3x3dbl_3") + o("branch_pool")
    if block == "Mixed_6a":
        return o("branch3x3") + o("branch3x3dbl_3") + cin
    if block == "Mixed_7a":
        return o("branch3x3_2") + o("branch7x7x3_4") + cin
    if block.startswith("Mixed_6"):
        return o("branch1x1") + o("branch7x7_3") + o("branch7x7dbl_5") + o("branch_pool")
    return (
        o("branch1x1") + o("branch3x3_2a") + o("branch3x3_2b") + o("branch3x3dbl_3a")
        + o("branch3x3dbl_3b") + o("branch_pool")
    )  # fmt: skip


def params_from_state_dict(
    state: dict[str, np.ndarray], to_device: bool = True
) -> dict[str, dict[str, jax.Array]]:
    """pytorch-fid's ``pt_inception-2015-12-05`` state dict (name → array) → params
    (numpy arrays with ``to_device=False``: a host-only check of a weights file).

    Checks every tensor the pool3 features need against the FID Inception's shapes; a
    missing or mismatched tensor is an error that names it. ``fc.*`` (the classifier) and
    ``*.num_batches_tracked`` are ignored; any other unknown name is an error.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    params = {}
    for name, cin, cout, (kh, kw), _, _ in CONVS:
        want = {
            "conv.weight": (cout, cin, kh, kw),
            "bn.weight": (cout,),
            "bn.bias": (cout,),
            "bn.running_mean": (cout,),
            "bn.running_var": (cout,),
        }
        got = {}
        for suffix, shape in want.items():
            key = f"{name}.{suffix}"
            if key not in state:
                raise KeyError(f"Inception weights: missing tensor {key!r} (shape {shape})")
            arr = np.asarray(state[key], np.float32)
            if arr.shape != shape:
                raise ValueError(
                    f"Inception weights: tensor {key!r} has shape {arr.shape}, expected {shape}"
                )
            got[suffix] = arr
        scale = got["bn.weight"] / np.sqrt(got["bn.running_var"] + BN_EPS)
        params[name] = {
            "w_HxWxIxO": got["conv.weight"].transpose(2, 3, 1, 0),
            "scale_O": scale,
            "shift_O": got["bn.bias"] - got["bn.running_mean"] * scale,
        }
    known = {f"{c[0]}.{s}" for c in CONVS for s in ("conv.weight", "bn.weight", "bn.bias")}
    known |= {f"{c[0]}.bn.{s}" for c in CONVS for s in ("running_mean", "running_var")}
    for key in state:
        if key in known or key.endswith(_UNUSED_SUFFIXES) or key.startswith(_UNUSED_PREFIXES):
            continue
        raise KeyError(f"Inception weights: unexpected tensor {key!r} (not the FID Inception?)")
    return jax.tree.map(jnp.asarray, params) if to_device else params


def load_params(path: str) -> dict[str, dict[str, jax.Array]]:
    """FID Inception params from a pytorch-fid weights file (see ``weights.load_state_dict_file``)."""
    return params_from_state_dict(weights.load_state_dict_file(path))


# ---------------------------------------------------------------------------------------
# Forward.


def resize_matrix(out_size: int, in_size: int) -> np.ndarray:
    """[out, in] weights of 1-D linear interpolation as ``F.interpolate(align_corners=False)``.

    Source coordinate ``(i + 0.5) * in/out - 0.5``, clamped below at 0; no antialiasing.
    Coordinates are computed in float32 as PyTorch's CPU kernel does for float32 images
    (float64 coordinates differ by up to ~3e-5 at large sizes).
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5), f32(0))
    lo = np.minimum(src.astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo.astype(f32)).astype(np.float64)
    m = np.zeros((out_size, in_size), np.float64)
    m[np.arange(out_size), lo] += 1.0 - frac
    m[np.arange(out_size), hi] += frac
    return m


def preprocess(images_NxHxWx3: jax.Array, size: int = RESIZE) -> jax.Array:
    """uint8 (or [0, 1] float) RGB → bilinear resize to size² → [-1, 1], NHWC (float32 for
    uint8 input; a float input keeps its dtype)."""
    x = images_NxHxWx3
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x
    _, h, w, _ = x.shape
    if (h, w) != (size, size):
        mh = jnp.asarray(resize_matrix(size, h), x.dtype)
        mw = jnp.asarray(resize_matrix(size, w), x.dtype)
        hp = jax.lax.Precision.HIGHEST
        x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=hp)
        x = jnp.einsum("pw,nowc->nopc", mw, x, precision=hp)
    return 2.0 * x - 1.0


def _conv(params: dict, name: str, x_NxHxWxC: jax.Array) -> jax.Array:
    _, _, _, _, stride, (ph, pw) = _SPEC[name]
    p = params[name]
    y = jax.lax.conv_general_dilated(
        x_NxHxWxC,
        p["w_HxWxIxO"],
        (stride, stride),
        ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    return jax.nn.relu(y * p["scale_O"] + p["shift_O"])


def _max_pool(x: jax.Array, k: int, stride: int, pad: int = 0) -> jax.Array:
    pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, stride, stride, 1), pads
    )


def _avg_pool_3x3_excl_pad(x: jax.Array) -> jax.Array:
    """3×3 stride-1 average pool, padding 1, that ignores the padded zeros."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pads)
    return total / count


def _block_a(p, n, x):
    c = functools.partial(_conv, p)
    b1 = c(f"{n}.branch1x1", x)
    b5 = c(f"{n}.branch5x5_2", c(f"{n}.branch5x5_1", x))
    b3 = c(f"{n}.branch3x3dbl_3", c(f"{n}.branch3x3dbl_2", c(f"{n}.branch3x3dbl_1", x)))
    bp = c(f"{n}.branch_pool", _avg_pool_3x3_excl_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


def _block_b(p, n, x):
    c = functools.partial(_conv, p)
    b3 = c(f"{n}.branch3x3", x)
    bd = c(f"{n}.branch3x3dbl_3", c(f"{n}.branch3x3dbl_2", c(f"{n}.branch3x3dbl_1", x)))
    return jnp.concatenate([b3, bd, _max_pool(x, 3, 2)], axis=-1)


def _block_c(p, n, x):
    c = functools.partial(_conv, p)
    b1 = c(f"{n}.branch1x1", x)
    b7 = c(f"{n}.branch7x7_3", c(f"{n}.branch7x7_2", c(f"{n}.branch7x7_1", x)))
    bd = x
    for i in range(1, 6):
        bd = c(f"{n}.branch7x7dbl_{i}", bd)
    bp = c(f"{n}.branch_pool", _avg_pool_3x3_excl_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


def _block_d(p, n, x):
    c = functools.partial(_conv, p)
    b3 = c(f"{n}.branch3x3_2", c(f"{n}.branch3x3_1", x))
    b7 = x
    for i in range(1, 5):
        b7 = c(f"{n}.branch7x7x3_{i}", b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 3, 2)], axis=-1)


def _block_e(p, n, x, max_pool_branch: bool):
    c = functools.partial(_conv, p)
    b1 = c(f"{n}.branch1x1", x)
    b3 = c(f"{n}.branch3x3_1", x)
    b3 = jnp.concatenate([c(f"{n}.branch3x3_2a", b3), c(f"{n}.branch3x3_2b", b3)], axis=-1)
    bd = c(f"{n}.branch3x3dbl_2", c(f"{n}.branch3x3dbl_1", x))
    bd = jnp.concatenate([c(f"{n}.branch3x3dbl_3a", bd), c(f"{n}.branch3x3dbl_3b", bd)], -1)
    # FID patch: Mixed_7c max-pools (as the TF graph does); Mixed_7b averages without pads.
    pooled = _max_pool(x, 3, 1, 1) if max_pool_branch else _avg_pool_3x3_excl_pad(x)
    bp = c(f"{n}.branch_pool", pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def pool3_from_normalized(params: dict, x_NxHxWx3: jax.Array) -> jax.Array:
    """Network on an already resized, [-1, 1] NHWC batch → pool3 features [N, 2048]."""
    c = functools.partial(_conv, params)
    x = c("Conv2d_2b_3x3", c("Conv2d_2a_3x3", c("Conv2d_1a_3x3", x_NxHxWx3)))
    x = _max_pool(x, 3, 2)
    x = _max_pool(c("Conv2d_4a_3x3", c("Conv2d_3b_1x1", x)), 3, 2)
    for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = _block_a(params, n, x)
    x = _block_b(params, "Mixed_6a", x)
    for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = _block_c(params, n, x)
    x = _block_d(params, "Mixed_7a", x)
    x = _block_e(params, "Mixed_7b", x, max_pool_branch=False)
    x = _block_e(params, "Mixed_7c", x, max_pool_branch=True)
    return jnp.mean(x, axis=(1, 2))


@functools.partial(jax.jit, static_argnames=("size",))
def pool3_features(params: dict, images_NxHxWx3: jax.Array, size: int = RESIZE) -> jax.Array:
    """uint8 RGB images (any size) → pool3 features [N, 2048], pytorch-fid's protocol."""
    return pool3_from_normalized(params, preprocess(images_NxHxWx3, size))


def batched(images: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Fixed-size batches (the last zero-padded, so one compile) and their real lengths."""
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start : start + batch_size])
        n = len(chunk)
        if n < batch_size:
            pad = np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        yield chunk, n


def resize_host(image_HxWx3: np.ndarray, size: int = RESIZE) -> np.ndarray:
    """One uint8 RGB image → float32 [size, size, 3] in [0, 1], pytorch-fid's bilinear
    resize on the host (images of any size can then share one compiled batch shape)."""
    x = np.asarray(image_HxWx3, np.float32) / 255.0
    h, w = x.shape[:2]
    if (h, w) != (size, size):
        mh = resize_matrix(size, h).astype(np.float32)
        mw = resize_matrix(size, w).astype(np.float32)
        x = (mh @ x.reshape(h, w * 3)).reshape(size, w, 3)  # two BLAS matmuls
        x = (mw @ x.transpose(1, 0, 2).reshape(w, size * 3)).reshape(size, size, 3)
        x = x.transpose(1, 0, 2)
    return np.ascontiguousarray(x)


@jax.jit
def pool3_from_unit(params: dict, x_NxHxWx3: jax.Array) -> jax.Array:
    """Resized [0, 1] images → pool3 features [N, 2048]."""
    return pool3_from_normalized(params, 2.0 * x_NxHxWx3 - 1.0)


class InceptionFeatures:
    """``image_features`` of the FID Inception (the ``FeatureExtractor`` image half)."""

    dim = FEATURE_DIM

    def __init__(self, params: dict, batch_size: int = 50, name: str = "inception"):
        self.params, self.batch_size, self.name = params, batch_size, name
        # Host resizes run in threads (BLAS matmuls release the GIL).
        self._pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))

    def image_features(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """uint8 RGB images (a batch array, or a list of any sizes) → [N, 2048]."""
        out = []
        for start in range(0, len(images), self.batch_size):
            x = np.stack(list(self._pool.map(resize_host, images[start : start + self.batch_size])))
            (chunk, n), *_ = batched(x, self.batch_size)
            out.append(np.asarray(pool3_from_unit(self.params, jnp.asarray(chunk)))[:n])
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
