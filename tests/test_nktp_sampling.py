"""Parallel decoding: K = 1 is next-token greedy decoding; exact mode keeps its codes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import row_reference

from mars_jax.model import decoder, heads, mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import nktp as nktp_sampling
from mars_jax.sampling.options import SamplingConfig
from mars_jax.tokens import code_order, formats, vocab

CFG = ModelConfig.tiny(
    compute_dtype="float32", frozen_dtype="float32", nktp_k=4, image_pos_grid=(2, 4)
)
TEXT_T, HI = 5, (2, 4)
GREEDY = SamplingConfig(cfg_scale=1.0, temperature=0.0, codebook_size=64)


@functools.cache
def _setup():
    @jax.jit
    def init(key):
        k_params, k_heads, k_noise = jax.random.split(key, 3)
        p = params.init_params(CFG, k_params)
        trainable = heads.extend_trainable(CFG, p["trainable"], k_heads)
        leaves, treedef = jax.tree.flatten(trainable)
        keys = jax.random.split(k_noise, len(leaves))
        noisy = [
            x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)
        ]
        return p["frozen"], jax.tree.unflatten(treedef, noisy)

    frozen, trainable = init(jax.random.key(0))
    rng = np.random.default_rng(0)
    texts = [list(rng.integers(0, 5000, 3)), list(rng.integers(0, 5000, 5))]
    lo = rng.integers(0, 64, (2, 2, 2))
    return frozen, trainable, texts, lo


def _sample(k, mode, scfg=GREEDY, seed=0):
    frozen, trainable, texts, lo = _setup()
    return nktp_sampling.sample_hires_codes(
        frozen, trainable, CFG, texts, lo, HI, k, mode, text_len=TEXT_T, scfg=scfg, seed=seed
    )


def test_k1_decoding_is_next_token_greedy():
    frozen, trainable, texts, lo = _setup()
    codes, info = _sample(1, "fast")
    assert info.passes == HI[0] * HI[1]
    # Reference: greedy by full forward recompute (general path, no cache) in sequence order.
    rows = formats.sr_prompt(texts, lo, TEXT_T, HI)
    n = HI[0] * HI[1]
    tokens = np.concatenate([rows["tokens"], np.zeros((2, n), np.int32)], 1)
    valid = np.concatenate([rows["valid"], np.zeros((2, n), bool)], 1)
    prompt_len = rows["tokens"].shape[1]
    # The training format's positions (high-res raster places, `formats.sr_image_positions`).
    order = code_order.hires_order(HI, CFG.nktp_k)
    full = row_reference.sr_row(texts[0], lo[0], np.zeros(HI, np.int64), TEXT_T, order)["positions"]
    hi_positions = full[prompt_len:-1] - full[prompt_len - 1]
    positions = np.concatenate([rows["positions"], rows["positions"][:, -1:] + hi_positions], 1)

    @jax.jit
    def next_code(frozen, trainable, tokens, valid, t):
        logits = mars.forward_logits(frozen, trainable, tokens, positions, valid, None, CFG)
        code_logits = jax.lax.dynamic_index_in_dim(logits, t, 1, keepdims=False)
        return jnp.argmax(code_logits[:, vocab.FIRST_IMAGE_CODE :][:, :64], -1)

    for i in range(n):
        t = prompt_len + i
        code = np.asarray(next_code(frozen, trainable, tokens, valid, t - 1))
        tokens[:, t], valid[:, t] = vocab.code_to_token(code), True
    ref = code_order.to_raster(vocab.token_to_code(tokens[:, prompt_len:]), HI, CFG.nktp_k)
    np.testing.assert_array_equal(codes, ref)


def test_exact_greedy_equals_plain_greedy():
    plain, _ = _sample(1, "fast")
    for k in (4,):
        exact, info = _sample(k, "exact")
        np.testing.assert_array_equal(exact, plain, err_msg=f"k={k}")
        assert 1 < info.passes <= HI[0] * HI[1]
    fast, info = _sample(4, "fast")
    assert info.passes == HI[0] * HI[1] // 4 and fast.shape == plain.shape


def test_exact_mode_keeps_agreeing_drafts():
    """With one allowed code every draft agrees: each pass keeps k codes (plus head 1's next)."""
    one = SamplingConfig(cfg_scale=1.0, temperature=0.0, codebook_size=1)
    codes, info = _sample(4, "exact", one)
    n = HI[0] * HI[1]
    assert (codes == 0).all()
    assert info.passes == 1 + -(-(n - 1) // 4)


def test_sampling_with_guidance_runs_and_bad_input_is_named():
    scfg = SamplingConfig(cfg_scale=2.0, temperature=1.0, top_k=8, codebook_size=64)
    codes, info = _sample(4, "exact", scfg, seed=3)
    assert codes.shape == (2, *HI) and codes.min() >= 0 and codes.max() < 64
    assert info.passes <= HI[0] * HI[1]
    with pytest.raises(ValueError, match="nktp_k=4"):
        _sample(5, "fast")
    with pytest.raises(ValueError, match="mode"):
        _sample(2, "slow")


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_a_rows_codes_depend_on_its_row_not_on_the_batch(mode):
    """Each row draws from its own key, and in exact mode advances at its own place: the
    second prompt decoded alone, as row 1 of the list, gets the codes it gets beside the
    first; another row id gets other codes."""
    frozen, trainable, texts, lo = _setup()
    scfg = SamplingConfig(cfg_scale=2.0, temperature=1.0, codebook_size=64)

    def sample(rows, row_ids=None):
        codes, _ = nktp_sampling.sample_hires_codes(
            frozen, trainable, CFG, [texts[r] for r in rows], lo[list(rows)], HI, 3, mode,
            text_len=TEXT_T, scfg=scfg, seed=5, row_ids=row_ids,
        )  # fmt: skip
        return codes

    both = sample((0, 1))
    np.testing.assert_array_equal(sample((1,), [[1, 0]]), both[1:])
    np.testing.assert_array_equal(sample((0,)), both[:1])
    assert not np.array_equal(sample((1,), [[0, 0]]), both[1:])


def test_exact_sampling_keeps_the_next_token_distribution():
    """Speculative sampling: the first two codes follow p(c0) p(c1 | c0) of head 1."""
    frozen, trainable, _, _ = _setup()
    # Drafting heads far from head 1, so keeping drafts unchecked would show.
    adapters = dict(trainable[heads.HEADS])
    adapters["down"] = jax.random.normal(jax.random.key(7), adapters["down"].shape)
    trainable = {**trainable, heads.HEADS: adapters}
    rows, c = 1500, 3
    scfg = SamplingConfig(cfg_scale=1.0, temperature=0.3, codebook_size=c)
    lo = np.zeros((rows, 1, 2), np.int64)
    codes, _ = nktp_sampling.sample_hires_codes(
        frozen, trainable, CFG, [[]] * rows, lo, HI, 2, "exact", text_len=TEXT_T, scfg=scfg
    )
    seq = codes.reshape(rows, -1)[:, code_order.hires_order(HI, CFG.nktp_k)]
    empirical = np.zeros((c, c))
    np.add.at(empirical, (seq[:, 0], seq[:, 1]), 1.0 / rows)

    # Exact joint from full forward passes; and what unchecked drafts would give.
    prompt = formats.sr_prompt([[]], lo[:1], TEXT_T, HI)
    first_code_position = nktp_sampling.hires_offsets(HI, CFG.nktp_k, 2)[0]
    img_position = prompt["positions"][:, -1:]

    @jax.jit
    def heads_at_end(frozen, trainable, tokens, valid):
        positions = np.concatenate([prompt["positions"], img_position + first_code_position], 1)
        positions = positions[:, : tokens.shape[1]]
        h = mars.forward_hidden(frozen, trainable, tokens, positions, valid, None, CFG)
        logits = heads.all_head_vision_logits(trainable, h[:, -1], 2, CFG, c)
        return jax.nn.softmax(logits / scfg.temperature, -1)

    first = heads_at_end(frozen, trainable, prompt["tokens"], prompt["valid"])[0]  # [2 heads, c]
    exact, unchecked = np.zeros((c, c)), np.zeros((c, c))
    for c0 in range(c):
        tokens = np.concatenate([prompt["tokens"], [[vocab.code_to_token(c0)]]], 1)
        valid = np.ones(tokens.shape, bool) & np.concatenate([prompt["valid"], [[True]]], 1)
        second = heads_at_end(frozen, trainable, tokens, valid)[0, 0]
        exact[c0] = first[0, c0] * np.asarray(second)
        unchecked[c0] = first[0, c0] * np.asarray(first[1])
    tv = lambda a, b: 0.5 * float(np.abs(a - b).sum())
    assert tv(exact, unchecked) > 0.1  # the test can tell the two apart
    # Sampling noise: expected total variation about 0.025 with 1,500 rows.
    assert tv(empirical, exact) < 0.06, (empirical, exact)
    assert tv(empirical, exact) < tv(empirical, unchecked)


def test_decode_dtype_is_float32_on_cpu_and_the_model_dtype_elsewhere():
    bf16 = ModelConfig.tiny(nktp_k=2)
    assert bf16.compute_dtype == "bfloat16"
    assert decoder.decode_dtype(bf16, "cpu") == "float32"
    assert decoder.decode_dtype(bf16, "gpu") == "bfloat16"
    assert decoder.decode_dtype(bf16, "tpu") == "bfloat16"


def test_fused_projections_compute_the_same_qkv_and_mlp():
    """`layers.fuse_projections` (the decoders' layout) against the separate matrices."""
    from mars_jax.model import layers

    _, trainable = _setup()[:2]
    layer = jax.tree.map(lambda x: x[0], trainable["layers"])  # layer 0
    fused = layers.fuse_projections(layer)
    assert "qkv" in fused["vision_attn"] and "q" not in fused["vision_attn"]
    assert "gate_up" in fused["vision_mlp"] and "gate" not in fused["vision_mlp"]
    h = jax.random.normal(jax.random.key(3), (5, CFG.width), jnp.float32)
    cos, sin = layers.rotary_cos_sin(jnp.arange(5), CFG.head_dim, CFG.rope_base)
    for a, b in zip(
        layers.qkv_projection(h, fused["vision_attn"], cos, sin, jnp.float32),
        layers.qkv_projection(h, layer["vision_attn"], cos, sin, jnp.float32),
        strict=True,
    ):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        layers.swiglu(h, fused["vision_mlp"], jnp.float32),
        layers.swiglu(h, layer["vision_mlp"], jnp.float32),
        rtol=1e-5,
        atol=1e-6,
    )
