"""Parallel decoding of stage-III high-res codes with the next-K heads (`model/heads.py`).

The prompt is the `sr` format up to `<img>`: `PAD… text <lo> lo-codes </lo> <img>`. Codes
come out in the model's sequence order (region-interleaved, `code_order.hires_order`) and are
returned as a raster grid. Two modes:

- `fast`: every forward pass feeds the k codes drafted by the previous pass and reads heads
  1..k at the last of them: k codes per pass, each head sampled independently.
- `exact`: self-speculative verification (blockwise parallel decoding, Stern et al. 2018;
  speculative sampling, Leviathan et al. 2023). A pass feeds k drafted codes; head 1 at each
  fed position checks the next draft. Drafts are kept up to the first disagreement, then
  head 1 supplies the next code and heads 2..k the next drafts. Greedy decoding gives exactly
  the codes of plain next-token greedy decoding; with temperature > 0 a draft is accepted with
  probability min(1, p/q) and a rejection is resampled from max(p - q, 0), which keeps the
  distribution of plain sampling. Rows of a batch advance by the fewest accepted codes.

k = 1 in either mode is plain next-token decoding. The KV cache is `mars_jax.model.decode`'s
(`k`, `v`, `valid`); `extend` feeds several tokens per pass, where `decode.decode_step` feeds
one. Only the vision head's logits over the sampler's codebook are computed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import decode, heads, layers, mars
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import SamplingConfig, filter_logits, guide
from mars_jax.tokens import code_order, formats, vocab
from mars_jax.tokens import layout as layout_lib

MODES = ("fast", "exact")


@dataclasses.dataclass(frozen=True)
class DecodeInfo:
    """What a decode cost: forward passes (the prompt's prefill counts as one)."""

    passes: int
    codes: int
    k: int
    mode: str
    dtype: str = ""  # compute dtype of the decode


# ------------------------------------------------------------------------------ cache


def extend(
    frozen: dict,
    trainable: dict,
    cache: dict,
    tokens_RxT: jax.Array,
    positions_RxT: jax.Array,
    valid_RxT: jax.Array,
    start: jax.Array | int,
    cfg: ModelConfig,
    modality: str = mars.MIXED,
) -> tuple[jax.Array, dict]:
    """Feed T tokens per row at cache slots `[start, start + T)`: final-normed `[R, T, D]`.

    New tokens attend to valid cache slots before `start` and causally to each other; slots
    at or after `start` (e.g. rejected drafts) are ignored and overwritten. `modality` is
    `"vision"` when every token is a vision id (runs one expert), else `"mixed"`.
    With per-layer weights (`unstack_layers`), the layers are unrolled instead of scanned,
    and the cache's `k` and `v` must be per-layer lists too (`unstack_cache`).
    """
    dtype = jnp.dtype(cfg.compute_dtype)
    frozen = mars.with_unfrozen(frozen, trainable)
    tokens_RxT = jnp.asarray(tokens_RxT, jnp.int32)
    valid_RxT = jnp.asarray(valid_RxT, bool)
    r, t = tokens_RxT.shape
    slots = cache["valid"].shape[1]
    start = jnp.asarray(start, jnp.int32)
    is_vision_N = vocab.is_vision(tokens_RxT.reshape(-1))
    cos_sin = layers.rotary_cos_sin(
        jnp.asarray(positions_RxT).reshape(-1), cfg.head_dim, cfg.rope_base
    )
    old_keys = cache["valid"] & (jnp.arange(slots) < start)[None]
    masks = [
        jnp.broadcast_to(old_keys[:, None, :], (r, t, slots)),
        jnp.tril(jnp.ones((t, t), bool))[None] & valid_RxT[:, None, :],
    ]
    x0 = mars.embed(frozen, trainable, tokens_RxT, modality, dtype)
    positions_RxT = jnp.asarray(positions_RxT, jnp.int32)
    offsets_RxT, opener_RxT = mars.image_offsets(
        tokens_RxT, positions_RxT, valid_RxT, cache["opener"]
    )
    x0 = mars.add_image_positions(x0, trainable, tokens_RxT, offsets_RxT, cfg)

    def layer(x, per_layer):
        frozen_layer, trainable_layer, k_cache, v_cache = per_layer
        q, k, v = mars.segment_qkv(
            x, modality, frozen_layer, trainable_layer, cos_sin, is_vision_N, cfg
        )
        k, v = k.astype(k_cache.dtype), v.astype(v_cache.dtype)
        a = mars.attend_blocks(q, [(k_cache, v_cache), (k, v)], masks)
        x = mars.segment_finish(x, a, modality, frozen_layer, trainable_layer, is_vision_N, cfg)
        return x, (k, v)

    zero = jnp.zeros((), jnp.int32)
    if isinstance(frozen["layers"], (list, tuple)):  # per-layer weights (`unstack_layers`)
        x, k_cache, v_cache = x0, [], []
        slot4 = (zero, start, zero, zero)
        for i, (frozen_layer, trainable_layer) in enumerate(
            zip(frozen["layers"], trainable["layers"], strict=True)
        ):
            k_i, v_i = cache["k"][i], cache["v"][i]
            x, (k, v) = layer(x, (frozen_layer, trainable_layer, k_i, v_i))
            k_cache.append(jax.lax.dynamic_update_slice(k_i, k, slot4))
            v_cache.append(jax.lax.dynamic_update_slice(v_i, v, slot4))
    else:
        xs = (frozen["layers"], trainable["layers"], cache["k"], cache["v"])
        x, (k_new, v_new) = jax.lax.scan(layer, x0, xs)
        slot5 = (zero, zero, start, zero, zero)
        k_cache = jax.lax.dynamic_update_slice(cache["k"], k_new, slot5)
        v_cache = jax.lax.dynamic_update_slice(cache["v"], v_new, slot5)
    cache = {
        "k": k_cache,
        "v": v_cache,
        "valid": jax.lax.dynamic_update_slice(cache["valid"], valid_RxT, (zero, start)),
        "opener": opener_RxT[:, -1],
    }
    return layers.rms_norm(x, frozen["final_norm"], cfg.norm_eps), cache


def prefill(
    frozen: dict,
    trainable: dict,
    cache: dict,
    tokens_RxP: jax.Array,
    positions_RxP: jax.Array,
    valid_RxP: jax.Array,
    text_len: int,
    cfg: ModelConfig,
) -> tuple[jax.Array, dict]:
    """`extend` with a whole prompt from slot 0. After the `text_len` text slot every token is
    a vision token, so each expert runs on its own part only (about half the FLOPs of running
    both on every token); `text_len=0`: one mixed pass."""
    if not text_len:
        return extend(frozen, trainable, cache, tokens_RxP, positions_RxP, valid_RxP, 0, cfg)
    parts = ((slice(0, text_len), layout_lib.TEXT), (slice(text_len, None), layout_lib.VISION))
    for (cut, modality), start in zip(parts, (0, text_len), strict=True):
        h, cache = extend(
            frozen, trainable, cache, tokens_RxP[:, cut], positions_RxP[:, cut],
            valid_RxP[:, cut], start, cfg, modality,
        )  # fmt: skip
    return h, cache


# ------------------------------------------------------------------------------ prompts


def sr_prompt_rows(
    text_ids: Sequence[Sequence[int]],
    lo_codes: np.ndarray,
    text_len: int,
    hi_grid: tuple[int, int],
) -> dict[str, np.ndarray]:
    """`PAD… text <lo> lo-codes </lo> <img>` rows (the `sr` training format up to `<img>`).

    The low-res codes' positions depend on the high-res grid (`formats.sr_image_positions`).
    """
    lo_codes = np.asarray(lo_codes)
    if lo_codes.ndim != 3 or lo_codes.shape[0] != len(text_ids):
        raise ValueError(
            f"lo_codes must be [B, h, w] with B = {len(text_ids)} prompts, got {lo_codes.shape}"
        )
    vocab.check_codes_in_range(lo_codes, vocab.NUM_IMAGE_CODES, "low-res codes")
    cut = formats.sr_hires_start(text_len, lo_codes.shape[1:]) + 1
    hi = np.zeros(tuple(int(x) for x in hi_grid), np.int64)
    rows = [
        formats.sr_row(np.asarray(ids)[:text_len], lo, hi, text_len)
        for ids, lo in zip(text_ids, lo_codes, strict=True)
    ]
    return {
        key: np.stack([row[key][:cut] for row in rows]) for key in ("tokens", "positions", "valid")
    }


def hires_offsets(hi_grid: tuple[int, int], model_k: int, k: int) -> np.ndarray:
    """Position of the i-th high-res code (sequence order of a model with `model_k` heads)
    minus that of `<img>`, for i < H·W + k (`formats.sr_image_positions`; the `k` extra
    slots hold drafts past the last code)."""
    n = hi_grid[0] * hi_grid[1]
    order = code_order.hires_order(hi_grid, model_k)
    return np.concatenate([1 + order, n + 1 + np.arange(k)]).astype(np.int32)


def with_unconditional(
    rows: dict[str, np.ndarray], text_len: int, lo_codes: np.ndarray, hi_grid: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Append caption-dropped rows (empty text slot, same low-res codes) for guidance."""
    uncond = sr_prompt_rows([[] for _ in range(len(lo_codes))], lo_codes, text_len, hi_grid)
    return {key: np.concatenate([rows[key], uncond[key]]) for key in rows}


# ------------------------------------------------------------------------------ choosing


def _head_code_logits(trainable, h_RxD, num, cfg, scfg, batch, use_cfg) -> jax.Array:
    """Guided code logits of heads 1..num: `[B, num, codebook_size]`."""
    logits = heads.all_head_vision_logits(trainable, h_RxD, num, cfg, scfg.codebook_size)
    if not use_cfg:
        return logits
    r = logits.shape[0]
    flat = guide(logits.reshape(r, -1), batch, scfg.cfg_scale)
    return flat.reshape(batch, num, -1)


def _filtered(logits_BxNxC: jax.Array, scfg: SamplingConfig) -> jax.Array:
    b, n, c = logits_BxNxC.shape
    flat = filter_logits(logits_BxNxC.reshape(b * n, c) / scfg.temperature, scfg.top_k, scfg.top_p)
    return flat.reshape(b, n, c)


def _choose(logits_BxNxC: jax.Array, rng: jax.Array, scfg: SamplingConfig):
    """Codes `[B, N]` (argmax, or a sample of the filtered softmax) and their probs `[B, N, C]`."""
    if scfg.temperature == 0.0:
        return jnp.argmax(logits_BxNxC, axis=-1).astype(jnp.int32), None
    filtered = _filtered(logits_BxNxC, scfg)
    codes = jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
    return codes, jax.nn.softmax(filtered, axis=-1)


def _rows(codes_BxN: jax.Array, use_cfg: bool) -> jax.Array:
    tokens = vocab.code_to_token(codes_BxN)
    return jnp.concatenate([tokens, tokens]) if use_cfg else tokens


# ------------------------------------------------------------------------------ decoding


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "scfg", "num_codes", "k", "mode", "use_cfg", "prepared", "text_len"),
)
def decode_codes(
    frozen: dict,
    trainable: dict,
    tokens_RxP: jax.Array,
    positions_RxP: jax.Array,
    valid_RxP: jax.Array,
    hi_offsets_N: jax.Array,
    rng: jax.Array,
    *,
    cfg: ModelConfig,
    scfg: SamplingConfig,
    num_codes: int,
    k: int,
    mode: str,
    use_cfg: bool,
    prepared: bool = False,
    text_len: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Codes `[B, num_codes]` in sequence order and the number of forward passes.

    `text_len`: the prompt's text slot (`sr_prompt_rows`), for `prefill`; the prefill counts
    as one pass.

    `hi_offsets_N` (`hires_offsets`): the rotary position of the i-th high-res code minus
    that of `<img>`, for `num_codes + k` codes (drafts past the last code are discarded).
    """
    rows, prompt_len = tokens_RxP.shape
    batch = rows // 2 if use_cfg else rows
    if not prepared:
        frozen, trainable = _prepare(frozen, trainable, cfg, scfg.codebook_size)
    # Weights are per layer here (`_prepare`), so the cache is too.
    cache = unstack_cache(decode.init_cache(cfg, rows, prompt_len + num_codes + k))
    h, cache = prefill(
        frozen, trainable, cache, tokens_RxP, positions_RxP, valid_RxP, text_len, cfg
    )
    img_position_R = jnp.asarray(positions_RxP)[:, -1]
    head_logits = lambda h_RxD: _head_code_logits(trainable, h_RxD, k, cfg, scfg, batch, use_cfg)
    rng, key = jax.random.split(rng)
    drafts_BxK, q_BxKxC = _choose(head_logits(h[:, -1]), key, scfg)

    def feed(cache, drafts_BxK, done):
        offsets_K = jax.lax.dynamic_slice(hi_offsets_N, (done,), (k,))
        positions = img_position_R[:, None] + offsets_K[None]
        return extend(
            frozen,
            trainable,
            cache,
            _rows(drafts_BxK, use_cfg),
            positions,
            jnp.ones((rows, k), bool),
            prompt_len + done,
            cfg,
            layout_lib.VISION,
        )

    if mode == "fast":
        num_passes = -(-num_codes // k)

        def step(carry, key):
            cache, drafts_BxK, done = carry
            h, cache = feed(cache, drafts_BxK, done)
            new_BxK, _ = _choose(head_logits(h[:, -1]), key, scfg)
            return (cache, new_BxK, done + k), drafts_BxK

        keys = jax.random.split(rng, num_passes - 1)
        (_, last_BxK, _), emitted = jax.lax.scan(step, (cache, drafts_BxK, 0), keys)
        codes = jnp.concatenate([emitted.transpose(1, 0, 2).reshape(batch, -1), last_BxK], 1)
        return codes[:, :num_codes], jnp.asarray(num_passes, jnp.int32)

    greedy = scfg.temperature == 0.0
    if q_BxKxC is None:
        q_BxKxC = jnp.zeros((batch, k, 1), jnp.float32)
    out = jnp.zeros((batch, num_codes + k), jnp.int32)

    def body(state):
        cache, drafts_BxK, q_BxKxC, out, done, passes, rng = state
        rng, k_accept, k_fix, k_draft = jax.random.split(rng, 4)
        h, cache = feed(cache, drafts_BxK, done)
        # Head 1 at every fed position: position j checks the draft of sequence index done+j+1.
        head1 = _all_positions(trainable, h, 1, cfg, scfg, batch, use_cfg)[:, :, 0]
        if greedy:
            verified = jnp.argmax(head1, axis=-1).astype(jnp.int32)
            match = drafts_BxK[:, 1:] == verified[:, :-1]
            p_BxTxC = None
        else:
            p_BxTxC = jax.nn.softmax(_filtered(head1, scfg), axis=-1)
            p_d = jnp.take_along_axis(p_BxTxC[:, :-1], drafts_BxK[:, 1:, None], -1)[..., 0]
            q_d = jnp.take_along_axis(q_BxKxC[:, 1:], drafts_BxK[:, 1:, None], -1)[..., 0]
            u = jax.random.uniform(k_accept, p_d.shape)
            match = u * q_d < p_d
        row_accepted = 1 + jnp.sum(jnp.cumprod(match.astype(jnp.int32), axis=1), axis=1)
        accepted = jnp.minimum(jnp.min(row_accepted), num_codes - done)
        out = jax.lax.dynamic_update_slice(out, drafts_BxK, (0, done))
        last = accepted - 1
        # All heads only at the last kept position: the next code and the next drafts.
        h_last = jax.lax.dynamic_index_in_dim(h, last, axis=1, keepdims=False)
        new_BxK, new_q = _choose(head_logits(h_last), k_draft, scfg)
        if not greedy:
            # Code `accepted`: kept draft where this row accepted it, else a residual sample.
            p_last = jax.lax.dynamic_index_in_dim(p_BxTxC, last, axis=1, keepdims=False)
            idx = jnp.minimum(accepted, k - 1)
            q_next = jax.lax.dynamic_index_in_dim(q_BxKxC, idx, axis=1, keepdims=False)
            q_next = jnp.where(accepted < k, q_next, 0.0)
            residual = jnp.maximum(p_last - q_next, 0.0)
            residual = jnp.where(jnp.sum(residual, -1, keepdims=True) > 0, residual, p_last)
            fixed = jax.random.categorical(k_fix, jnp.log(residual), axis=-1).astype(jnp.int32)
            kept = jax.lax.dynamic_index_in_dim(drafts_BxK, idx, axis=1, keepdims=False)
            first = jnp.where(row_accepted > accepted, kept, fixed)
            new_BxK = new_BxK.at[:, 0].set(first)
        else:
            new_q = q_BxKxC
        return cache, new_BxK, new_q, out, done + accepted, passes + 1, rng

    # Each pass commits its accepted drafts and head 1's next code (the new first draft), so
    # the loop stops once only that code is missing: it needs no pass of its own.
    state = (cache, drafts_BxK, q_BxKxC, out, jnp.int32(0), jnp.int32(1), rng)
    state = jax.lax.while_loop(lambda s: s[4] + 1 < num_codes, body, state)
    _, drafts_BxK, _, out, done, passes, _ = state
    out = jax.lax.dynamic_update_slice(out, drafts_BxK, (0, done))
    return out[:, :num_codes], passes


def decode_dtype(cfg: ModelConfig, backend: str | None = None) -> str:
    """Compute dtype of decoding: float32 on CPU, else `cfg.compute_dtype`.

    XLA:CPU has no native bfloat16 matmul: on CPU a bf16 pass is slower than the same pass in
    float32, and its cost grows with the tokens fed, so a 4-code pass cost about twice a
    1-code pass in bf16 against 1.25 times in float32 (demo model, batch 1; docs/NKTP.md).
    The weights are the same values either way (bf16 → float32 is exact); only activations
    and the KV cache are kept at the higher precision.
    """
    backend = backend or jax.default_backend()
    return "float32" if backend == "cpu" else str(cfg.compute_dtype)


class Prepared(dict):
    """Weights ready for decoding (`prepare_params`): `{"frozen": ..., "trainable": ...}`."""


def _prepare(frozen: dict, trainable: dict, cfg: ModelConfig, num_ids: int | None):
    # Weights in the compute dtype (same values: every use casts them), stacked layers cut
    # into per-layer arrays, heads cut to the codebook: once per call, not in every pass.
    # Unfrozen LLM copies (`ModelConfig.unfreeze`) replace their frozen groups here, before
    # the layers are cut: `extend`'s own merge needs stacked layers.
    frozen = mars.with_unfrozen(frozen, trainable)
    trainable = {name: w for name, w in trainable.items() if name != "unfrozen_layers"}
    frozen, trainable = _in_compute_dtype(frozen, cfg), _in_compute_dtype(trainable, cfg)
    frozen, trainable = unstack_layers(frozen), unstack_layers(trainable)
    frozen = {**frozen, "layers": [layers.fuse_projections(x) for x in frozen["layers"]]}
    trainable = {**trainable, "layers": [layers.fuse_projections(x) for x in trainable["layers"]]}
    return frozen, _decode_heads(trainable, num_ids)


_prepare_jit = jax.jit(_prepare, static_argnums=(2, 3))


def prepare_params(
    frozen: dict,
    trainable: dict,
    cfg: ModelConfig,
    codebook_size: int | None,
    compute_dtype: str | None = None,
) -> Prepared:
    """The decode's copy of the weights, made once for many `sample_hires_codes` calls
    (pass it as `frozen`, with `trainable=None`): otherwise every call casts, cuts and
    copies all weights again before its first pass. `codebook_size` and `compute_dtype`
    must be those of the calls (`SamplingConfig.codebook_size`, `decode_dtype`)."""
    cfg = cfg.replace(compute_dtype=compute_dtype or decode_dtype(cfg))
    if heads.num_heads(cfg) > 1:
        heads.check_heads(cfg, trainable)
    f, t = _prepare_jit(frozen, trainable, cfg, codebook_size)
    return Prepared(frozen=f, trainable=t, dtype=cfg.compute_dtype, codebook_size=codebook_size)


def unstack_layers(params: dict) -> dict:
    """`params` with `layers` (stacked `[Ly, ...]`) as a list of per-layer trees.

    A scan over stacked layers slices (copies) every layer's weights out of the stack in
    every decoding pass: on CPU that copy cost more than the matmuls of a demo-sized pass.
    Cut once per decode call, the per-layer weights are loop invariants of the passes.
    """
    stacked = params["layers"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    return {**params, "layers": [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)]}


def unstack_cache(cache: dict) -> dict:
    """`cache` with `k` and `v` (`[Ly, R, S, KV, Dh]`) as per-layer lists, for the unrolled
    layers of `extend`: reading one layer's slice out of the stacked cache copied it in every
    pass (on CPU, ~0.13 ms of a 0.33 ms one-code pass of the demo model)."""
    return {**cache, "k": list(cache["k"]), "v": list(cache["v"])}


def _decode_heads(trainable: dict, num_ids: int | None) -> dict:
    """The vision head cut to the sampler's codebook and the next-K adapters fused
    (`heads.fuse_heads`), once per decode call: done inside the passes, both cost a copy of
    the weights in every pass."""
    out = dict(trainable)
    if num_ids:
        out["vision_head"] = trainable["vision_head"][:, :num_ids]
    if heads.HEADS in trainable:
        adapters = trainable[heads.HEADS]
        out[heads.HEADS] = heads.fuse_heads(adapters, adapters["down"].shape[0] + 1)
    return out


def _in_compute_dtype(tree: dict, cfg: ModelConfig) -> dict:
    dtype = jnp.dtype(cfg.compute_dtype)
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def _all_positions(trainable, h_RxTxD, k, cfg, scfg, batch, use_cfg) -> jax.Array:
    """Guided code logits of heads 1..k at each of the T fed positions: `[B, T, k, C]`."""
    r, t, d = h_RxTxD.shape
    logits = heads.all_head_vision_logits(
        trainable, h_RxTxD.reshape(r * t, d), k, cfg, scfg.codebook_size
    )
    logits = logits.reshape(r, t, k, -1)
    if use_cfg:
        cond, uncond = logits[:batch], logits[batch:]
        logits = cond + (scfg.cfg_scale - 1.0) * (cond - uncond)
    return logits


def sample_hires_codes(
    frozen: dict,
    trainable: dict,
    cfg: ModelConfig,
    text_ids: Sequence[Sequence[int]],
    lo_codes: np.ndarray,
    hi_grid: tuple[int, int],
    k: int,
    mode: str = "fast",
    *,
    text_len: int,
    scfg: SamplingConfig | None = None,
    seed: int = 0,
    compute_dtype: str | None = None,
) -> tuple[np.ndarray, DecodeInfo]:
    """High-res codes `[B, h, w]` (raster order) for captions and low-res codes `[B, hl, wl]`.

    `k` (1 … `cfg.nktp_k`) codes are drafted per pass; `mode` is `"fast"` or `"exact"`.
    The code order is the one the model was trained with (`code_order.hires_order(hi_grid,
    cfg.nktp_k)`), whatever `k` is. `compute_dtype`: activations and KV cache of the decode
    (default `decode_dtype(cfg)`: float32 on CPU, else the model's compute dtype).
    `frozen` may be `prepare_params(...)` (then `trainable` is ignored).
    """
    scfg = scfg or SamplingConfig(cfg_scale=1.0, temperature=0.0)
    cfg = cfg.replace(compute_dtype=compute_dtype or decode_dtype(cfg))
    if mode not in MODES:
        raise ValueError(f"nktp mode {mode!r} not in {MODES}")
    cfg.check_image_grid(hi_grid, "super-resolution")
    if not 1 <= k <= heads.num_heads(cfg):
        raise ValueError(f"--nktp={k}: must be in [1, model.nktp_k={cfg.nktp_k}]")
    prepared = isinstance(frozen, Prepared)
    if prepared:
        if (frozen["dtype"], frozen["codebook_size"]) != (cfg.compute_dtype, scfg.codebook_size):
            raise ValueError(
                f"prepared weights are for dtype {frozen['dtype']} and codebook "
                f"{frozen['codebook_size']}, the call asks {cfg.compute_dtype} and "
                f"{scfg.codebook_size}"
            )
        frozen, trainable = frozen["frozen"], frozen["trainable"]
    elif k > 1:
        heads.check_heads(cfg, trainable)
    hi_grid = (int(hi_grid[0]), int(hi_grid[1]))
    code_order.hires_order(
        hi_grid, heads.num_heads(cfg)
    )  # raises if the grid does not fit K regions
    rows = sr_prompt_rows(text_ids, lo_codes, text_len, hi_grid)
    use_cfg = scfg.cfg_scale != 1.0
    if use_cfg:
        rows = with_unconditional(rows, text_len, lo_codes, hi_grid)
    num_codes = hi_grid[0] * hi_grid[1]
    codes, passes = decode_codes(
        frozen,
        trainable,
        jnp.asarray(rows["tokens"]),
        jnp.asarray(rows["positions"]),
        jnp.asarray(rows["valid"]),
        jnp.asarray(hires_offsets(hi_grid, heads.num_heads(cfg), int(k))),
        jax.random.key(seed),
        cfg=cfg,
        scfg=scfg,
        num_codes=num_codes,
        k=int(k),
        mode=mode,
        use_cfg=use_cfg,
        prepared=prepared,
        text_len=int(text_len),
    )
    raster = code_order.to_raster(np.asarray(codes), hi_grid, heads.num_heads(cfg))
    return raster, DecodeInfo(
        passes=int(passes), codes=num_codes, k=int(k), mode=mode, dtype=cfg.compute_dtype
    )
