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
  distribution of plain sampling. Each row advances by the codes it accepted, at its own
  place in the KV cache.

Every draw of a row comes from that row's key (`options.row_keys`: the seed folded with the
prompt's place in the caller's list), folded with the pass and what the draw is for. A row's
codes therefore do not depend on the batch it is decoded in, in either mode.

k = 1 in either mode is plain next-token decoding. Every pass is one `decoder.extend` of the
drafted codes; only the vision head's logits over the sampler's codebook are computed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import decoder, heads
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import options
from mars_jax.sampling.options import SamplingConfig
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


# ------------------------------------------------------------------------------ prompts


def hires_offsets(hi_grid: tuple[int, int], model_k: int, k: int) -> np.ndarray:
    """Position of the i-th high-res code (sequence order of a model with `model_k` heads)
    minus that of `<img>`, for i < H·W + k (`formats.sr_image_positions`; the `k` extra
    slots hold drafts past the last code)."""
    n = hi_grid[0] * hi_grid[1]
    order = code_order.hires_order(hi_grid, model_k)
    return np.concatenate([1 + order, n + 1 + np.arange(k)]).astype(np.int32)


# ------------------------------------------------------------------------------ choosing


def _head_logits(weights, h_RxD, num, cfg, scfg, batch) -> jax.Array:
    """Guided code logits of heads 1..num: `[B, num, codebook_size]`."""
    logits = decoder.head_code_logits(weights, h_RxD, num, cfg)
    return options.guide(logits, batch, scfg.cfg_scale) if scfg.guided else logits


# What a pass's draw is for: each row's key of a pass is folded with one of these.
_DRAFT, _ACCEPT, _FIX = 0, 1, 2


def _keys(keys_B: jax.Array, pass_index: jax.Array | int, purpose: int) -> jax.Array:
    """Each row's key `[B]` for one draw of pass `pass_index` (the prefill's drafts: 0)."""
    return options.at_step(options.at_step(keys_B, pass_index), purpose)


def _choose(logits_BxNxC: jax.Array, keys_B: jax.Array, scfg: SamplingConfig):
    """Codes `[B, N]` (argmax, or a sample of the filtered softmax, each row from its own
    key) and their probs `[B, N, C]`."""
    if scfg.temperature == 0.0:
        return jnp.argmax(logits_BxNxC, axis=-1).astype(jnp.int32), None
    filtered = options.filtered(logits_BxNxC, scfg)
    return options.draw_rows(keys_B, filtered), jax.nn.softmax(filtered, axis=-1)


def _rows(codes_BxN: jax.Array, use_cfg: bool) -> jax.Array:
    tokens = vocab.code_to_token(codes_BxN)
    return jnp.concatenate([tokens, tokens]) if use_cfg else tokens


# ------------------------------------------------------------------------------ decoding


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "num_codes", "k", "mode", "text_len"))
def decode_codes(
    weights: decoder.DecodeWeights,
    tokens_RxP: jax.Array,
    positions_RxP: jax.Array,
    valid_RxP: jax.Array,
    hi_offsets_N: jax.Array,
    keys_B: jax.Array,
    *,
    cfg: ModelConfig,
    scfg: SamplingConfig,
    num_codes: int,
    k: int,
    mode: str,
    text_len: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Codes `[B, num_codes]` in sequence order and the number of forward passes.

    Rows are `[cond; uncond]` when `scfg.guided`; `keys_B` is each prompt's key
    (`options.row_keys`). `text_len`: the prompt's text slot (`formats.sr_prompt`), for
    `decoder.prefill`; the prefill counts as one pass.
    `hi_offsets_N` (`hires_offsets`): the rotary position of the i-th high-res code minus
    that of `<img>`, for `num_codes + k` codes (drafts past the last code are discarded).
    """
    rows, prompt_len = tokens_RxP.shape
    use_cfg = scfg.guided
    batch = rows // 2 if use_cfg else rows
    cache = decoder.init_cache(cfg, rows, prompt_len + num_codes + k, weights.compute_dtype)
    h, cache = decoder.prefill(weights, cache, tokens_RxP, positions_RxP, valid_RxP, cfg, text_len)
    img_position_R = jnp.asarray(positions_RxP)[:, -1]
    head_logits = lambda h_RxD: _head_logits(weights, h_RxD, k, cfg, scfg, batch)
    drafts_BxK, q_BxKxC = _choose(head_logits(h[:, -1]), _keys(keys_B, 0, _DRAFT), scfg)

    def own_rows(x_B: jax.Array) -> jax.Array:
        """A prompt's value on each of its rows (`[cond; uncond]` when guided)."""
        return jnp.concatenate([x_B, x_B]) if use_cfg else x_B

    def feed(cache, drafts_BxK, done):
        """Feed the drafts after `done` committed codes: one count for the batch (fast
        mode) or `[B]`, each row at its own place (exact mode)."""
        done = jnp.asarray(done, jnp.int32)
        if done.ndim == 0:
            offsets = jax.lax.dynamic_slice(hi_offsets_N, (done,), (k,))[None]
            start = prompt_len + done
        else:
            offsets = own_rows(hi_offsets_N[done[:, None] + jnp.arange(k)[None]])
            start = prompt_len + own_rows(done)
        return decoder.extend(
            weights,
            cache,
            _rows(drafts_BxK, use_cfg),
            img_position_R[:, None] + offsets,
            jnp.ones((rows, k), bool),
            start,
            cfg,
            layout_lib.VISION,
        )

    if mode == "fast":
        num_passes = -(-num_codes // k)

        def step(carry, pass_index):
            cache, drafts_BxK, done = carry
            h, cache = feed(cache, drafts_BxK, done)
            new_BxK, _ = _choose(head_logits(h[:, -1]), _keys(keys_B, pass_index, _DRAFT), scfg)
            return (cache, new_BxK, done + k), drafts_BxK

        passes = jnp.arange(1, num_passes)
        (_, last_BxK, _), emitted = jax.lax.scan(step, (cache, drafts_BxK, 0), passes)
        codes = jnp.concatenate([emitted.transpose(1, 0, 2).reshape(batch, -1), last_BxK], 1)
        return codes[:, :num_codes], jnp.asarray(num_passes, jnp.int32)

    # Exact mode: every row advances by the drafts it accepted, at its own place in the
    # cache, and draws from its own key folded with its pass number. A row's codes depend on
    # its prompt and key alone; the loop runs until the slowest row is done, and a finished
    # row keeps its state through the passes that remain.
    greedy = scfg.temperature == 0.0
    if q_BxKxC is None:
        q_BxKxC = jnp.zeros((batch, k, 1), jnp.float32)
    out = jnp.zeros((batch, num_codes + k), jnp.int32)
    row_B = jnp.arange(batch)

    def body(state):
        cache, drafts_BxK, q_BxKxC, out, done_B, passes = state
        active_B = done_B + 1 < num_codes
        h, cache = feed(cache, drafts_BxK, done_B)
        # Head 1 at every fed position: position j checks the draft of sequence index done+j+1.
        head1 = _all_positions(weights, h, 1, cfg, scfg, batch)[:, :, 0]
        if greedy:
            verified = jnp.argmax(head1, axis=-1).astype(jnp.int32)
            match = drafts_BxK[:, 1:] == verified[:, :-1]
            p_BxTxC = None
        else:
            p_BxTxC = jax.nn.softmax(options.filtered(head1, scfg), axis=-1)
            p_d = jnp.take_along_axis(p_BxTxC[:, :-1], drafts_BxK[:, 1:, None], -1)[..., 0]
            q_d = jnp.take_along_axis(q_BxKxC[:, 1:], drafts_BxK[:, 1:, None], -1)[..., 0]
            uniform = jax.vmap(lambda key: jax.random.uniform(key, p_d.shape[1:]))
            u = uniform(_keys(keys_B, passes, _ACCEPT))
            match = u * q_d < p_d
        row_accepted = 1 + jnp.sum(jnp.cumprod(match.astype(jnp.int32), axis=1), axis=1)
        accepted_B = jnp.where(active_B, jnp.minimum(row_accepted, num_codes - done_B), 0)
        out = decoder.write_slots(out, drafts_BxK, done_B, slot_axis=1)
        last_B = jnp.maximum(accepted_B - 1, 0)
        # All heads only at each row's last kept position: the next code and the next drafts.
        h_last = h[jnp.arange(rows), own_rows(last_B)]
        new_BxK, new_q = _choose(head_logits(h_last), _keys(keys_B, passes, _DRAFT), scfg)
        if not greedy:
            # Code `accepted`: the kept draft where the row accepted it, else a residual sample.
            p_last = p_BxTxC[row_B, last_B]
            idx_B = jnp.minimum(accepted_B, k - 1)
            q_next = jnp.where((accepted_B < k)[:, None], q_BxKxC[row_B, idx_B], 0.0)
            residual = jnp.maximum(p_last - q_next, 0.0)
            residual = jnp.where(jnp.sum(residual, -1, keepdims=True) > 0, residual, p_last)
            fixed = options.draw_rows(_keys(keys_B, passes, _FIX), jnp.log(residual))
            first = jnp.where(row_accepted > accepted_B, drafts_BxK[row_B, idx_B], fixed)
            new_BxK = new_BxK.at[:, 0].set(first)
            new_q = jnp.where(active_B[:, None, None], new_q, q_BxKxC)
        else:
            new_q = q_BxKxC
        new_BxK = jnp.where(active_B[:, None], new_BxK, drafts_BxK)
        return cache, new_BxK, new_q, out, done_B + accepted_B, passes + 1

    # Each pass commits its accepted drafts and head 1's next code (the new first draft), so
    # a row is done once only that code is missing: it needs no pass of its own.
    done_B = jnp.zeros((batch,), jnp.int32)
    state = (cache, drafts_BxK, q_BxKxC, out, done_B, jnp.int32(1))
    state = jax.lax.while_loop(lambda s: jnp.any(s[4] + 1 < num_codes), body, state)
    _, drafts_BxK, _, out, done_B, passes = state
    out = decoder.write_slots(out, drafts_BxK, done_B, slot_axis=1)
    return out[:, :num_codes], passes


def _all_positions(weights, h_RxTxD, k, cfg, scfg, batch) -> jax.Array:
    """Guided code logits of heads 1..k at each of the T fed positions: `[B, T, k, C]`."""
    r, t, d = h_RxTxD.shape
    logits = decoder.head_code_logits(weights, h_RxTxD.reshape(r * t, d), k, cfg)
    logits = logits.reshape(r, t, k, -1)
    return options.guide(logits, batch, scfg.cfg_scale) if scfg.guided else logits


def sample_hires_codes(
    frozen: dict | decoder.DecodeWeights,
    trainable: dict | None,
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
    row_ids: np.ndarray | None = None,
    compute_dtype: str | None = None,
) -> tuple[np.ndarray, DecodeInfo]:
    """High-res codes `[B, h, w]` (raster order) for captions and low-res codes `[B, hl, wl]`.

    `k` (1 … `cfg.nktp_k`) codes are drafted per pass; `mode` is `"fast"` or `"exact"`.
    The code order is the one the model was trained with (`code_order.hires_order(hi_grid,
    cfg.nktp_k)`), whatever `k` is. `row_ids` `[B, 2]`: each row's prompt index and
    candidate number in the caller's list (`options.row_keys`; default: prompts `0 … B-1`).
    `compute_dtype`: activations and KV cache of the decode
    (default `decoder.decode_dtype(cfg)`: float32 on CPU, else the model's compute dtype).
    `frozen` may be `decoder.prepare(...)`'s weights (then `trainable` is None): made once,
    they serve many calls.
    """
    scfg = scfg or SamplingConfig(cfg_scale=1.0, temperature=0.0)
    if mode not in MODES:
        raise ValueError(f"nktp mode {mode!r} not in {MODES}")
    cfg.check_image_grid(hi_grid, "super-resolution")
    if not 1 <= k <= heads.num_heads(cfg):
        raise ValueError(f"--nktp={k}: must be in [1, model.nktp_k={cfg.nktp_k}]")
    if isinstance(frozen, decoder.DecodeWeights):
        weights = frozen
        want = (compute_dtype or weights.compute_dtype, scfg.codebook_size)
        if (weights.compute_dtype, weights.num_codes) != want:
            raise ValueError(
                f"weights prepared for dtype {weights.compute_dtype} and {weights.num_codes} "
                f"codes, the call asks {want[0]} and {want[1]}"
            )
    else:
        weights = decoder.prepare(frozen, trainable, cfg, scfg.codebook_size, compute_dtype)
    hi_grid = (int(hi_grid[0]), int(hi_grid[1]))
    code_order.hires_order(hi_grid, heads.num_heads(cfg))  # raises if K regions do not fit
    texts = options.with_unconditional(text_ids) if scfg.guided else text_ids
    lo_rows = np.concatenate([lo_codes, lo_codes]) if scfg.guided else lo_codes
    rows = formats.sr_prompt(texts, lo_rows, text_len, hi_grid)
    num_codes = hi_grid[0] * hi_grid[1]
    codes, passes = decode_codes(
        weights,
        jnp.asarray(rows["tokens"]),
        jnp.asarray(rows["positions"]),
        jnp.asarray(rows["valid"]),
        jnp.asarray(hires_offsets(hi_grid, heads.num_heads(cfg), int(k))),
        options.call_keys(seed, len(text_ids), row_ids),
        cfg=cfg,
        scfg=scfg,
        num_codes=num_codes,
        k=int(k),
        mode=mode,
        text_len=int(text_len),
    )
    raster = code_order.to_raster(np.asarray(codes), hi_grid, heads.num_heads(cfg))
    return raster, DecodeInfo(
        passes=int(passes), codes=num_codes, k=int(k), mode=mode, dtype=weights.compute_dtype
    )
