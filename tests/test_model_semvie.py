"""SemVIE forward: reference parity, static == general path, causality, padding, gradients."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.model import mars, params
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import layout as L
from mars_jax.tokens import vocab

CFG = ModelConfig.tiny(compute_dtype="float32", frozen_dtype="float32")
TEXT_T, CODES = 6, 8  # t2i: 6 text + <img> 8 codes <end> = 16 tokens
T2I = L.t2i(TEXT_T, CODES)
CAPTION = L.caption(TEXT_T, CODES)


@functools.partial(jax.jit, static_argnames=("layout",))
def logits_fn(p, tokens, positions, valid, layout):
    return mars.forward_logits(p["frozen"], p["trainable"], tokens, positions, valid, layout, CFG)


@functools.cache
def _params(seed=0, equal_experts=False):
    return jax.jit(_make_params, static_argnums=(0, 1))(seed, equal_experts)


def _make_params(seed, equal_experts):
    """Random params; vision parts perturbed away from the text copies unless equal_experts."""
    p = params.init_params(CFG, jax.random.key(seed))
    flat, unravel = jax.flatten_util.ravel_pytree(p["trainable"])
    trainable = unravel(flat + 0.05 * jax.random.normal(jax.random.key(seed + 100), flat.shape))
    if equal_experts:
        trainable["layers"] = {
            "vision_attn": p["frozen"]["layers"]["text_attn"],
            "vision_mlp": p["frozen"]["layers"]["text_mlp"],
        }
    return {"frozen": p["frozen"], "trainable": trainable}


def _t2i_tokens(rng, batch, pad=None):
    text = rng.integers(0, 5000, (batch, TEXT_T))
    codes = vocab.code_to_token(rng.integers(0, vocab.NUM_IMAGE_CODES, (batch, CODES)))
    col = lambda v: np.full((batch, 1), v)
    tokens = np.concatenate([text, col(vocab.IMAGE_START), codes, col(vocab.IMAGE_END)], 1)
    valid = np.ones(tokens.shape, bool)
    for b, n in enumerate(pad or []):
        valid[b, :n] = False
        tokens[b, :n] = vocab.PAD
    return tokens, _positions(valid), valid


def _positions(valid):
    return np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)


def _hf_dense_decoder(p):
    """A plain Hugging Face Qwen2 decoder with the joint 160,136-id vocabulary."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    c = CFG
    hf = transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(
            vocab_size=vocab.VOCAB_SIZE,
            hidden_size=c.width,
            intermediate_size=c.mlp_dim,
            num_hidden_layers=c.num_layers,
            num_attention_heads=c.num_heads,
            num_key_value_heads=c.num_kv_heads,
            rms_norm_eps=c.norm_eps,
            tie_word_embeddings=False,
        )
    ).eval()
    fr, tr = jax.tree.map(np.asarray, p["frozen"]), jax.tree.map(np.asarray, p["trainable"])
    lay, attn, mlp = fr["layers"], fr["layers"]["text_attn"], fr["layers"]["text_mlp"]
    sd = {
        "model.embed_tokens.weight": np.concatenate([fr["embed"], tr["vision_embed"]]),
        "lm_head.weight": np.concatenate([fr["text_head"], tr["vision_head"]], 1).T,
        "model.norm.weight": fr["final_norm"],
    }
    for i in range(c.num_layers):
        pre = f"model.layers.{i}."
        sd[pre + "input_layernorm.weight"] = lay["ln1"][i]
        sd[pre + "post_attention_layernorm.weight"] = lay["ln2"][i]
        for x in "qkv":
            sd[pre + f"self_attn.{x}_proj.weight"] = attn[x][i].reshape(c.width, -1).T
            sd[pre + f"self_attn.{x}_proj.bias"] = attn[x + "_bias"][i].reshape(-1)
        sd[pre + "self_attn.o_proj.weight"] = lay["o"][i].reshape(-1, c.width).T
        sd[pre + "mlp.gate_proj.weight"] = mlp["gate"][i].T
        sd[pre + "mlp.up_proj.weight"] = mlp["up"][i].T
        sd[pre + "mlp.down_proj.weight"] = mlp["down"][i].T
    hf.load_state_dict({k: torch.tensor(np.ascontiguousarray(v)) for k, v in sd.items()})

    def logits(tokens):
        with torch.no_grad():
            return hf(torch.tensor(tokens)).logits.numpy()

    return logits


def test_equal_experts_equal_plain_decoder_for_any_mix():
    p = _params(equal_experts=True)
    hf_logits = _hf_dense_decoder(p)
    rng = np.random.default_rng(0)
    t2i, positions, valid = _t2i_tokens(rng, 2)
    # Random mix of text and vision ids, for the general path.
    mixed = np.where(
        rng.random(t2i.shape) < 0.5,
        rng.integers(0, 5000, t2i.shape),
        rng.integers(vocab.TEXT_VOCAB_SIZE, vocab.VOCAB_SIZE, t2i.shape),
    )
    caption = np.concatenate([t2i[:, TEXT_T:], t2i[:, :TEXT_T]], 1)
    for tokens, layout in ((mixed, None), (t2i, T2I), (t2i, None), (caption, CAPTION)):
        expected = hf_logits(tokens)
        got = np.asarray(logits_fn(p, tokens, positions, valid, layout))
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0, err_msg=str(layout))


def test_static_layout_path_equals_general_path_with_padding():
    p = _params()
    rng = np.random.default_rng(1)
    tokens, positions, valid = _t2i_tokens(rng, 2, pad=[2, TEXT_T])
    a = logits_fn(p, tokens, positions, valid, T2I)
    b = logits_fn(p, tokens, positions, valid, None)
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)
    caption = np.concatenate([tokens[:, TEXT_T:], tokens[:, :TEXT_T]], 1)
    cvalid = np.concatenate([valid[:, TEXT_T:], valid[:, :TEXT_T]], 1)
    c = logits_fn(p, caption, _positions(cvalid), cvalid, CAPTION)
    d = logits_fn(p, caption, _positions(cvalid), cvalid, None)
    np.testing.assert_allclose(c, d, atol=2e-5, rtol=0)


@pytest.mark.parametrize("layout", [T2I, None])
def test_causality(layout):
    p = _params()
    rng = np.random.default_rng(2)
    tokens, positions, valid = _t2i_tokens(rng, 2)
    base = np.asarray(logits_fn(p, tokens, positions, valid, layout))
    for t in (3, TEXT_T + 4):
        changed = tokens.copy()
        changed[:, t] = changed[:, t] + 1
        out = np.asarray(logits_fn(p, changed, positions, valid, layout))
        np.testing.assert_array_equal(out[:, :t], base[:, :t])
        assert np.abs(out[:, t:] - base[:, t:]).max() > 1e-4


def test_left_padding_does_not_change_real_logits():
    p = _params()
    rng = np.random.default_rng(3)
    tokens, positions, valid = _t2i_tokens(rng, 2)
    # The same 4 real text tokens, left-padded by 2, versus a 4-token text slot.
    padded, ppos, pvalid = tokens.copy(), positions.copy(), valid.copy()
    padded[:, :2], pvalid[:, :2] = vocab.PAD, False
    ppos = _positions(pvalid)
    short = padded[:, 2:]
    a = logits_fn(p, padded, ppos, pvalid, T2I)
    b = logits_fn(
        p,
        short,
        _positions(np.ones(short.shape, bool)),
        np.ones(short.shape, bool),
        L.t2i(TEXT_T - 2, CODES),
    )
    np.testing.assert_allclose(a[:, 2:], b, atol=2e-5, rtol=0)
    # A sequence whose text slot is all padding yields finite logits everywhere.
    empty_valid = valid.copy()
    empty_valid[:, :TEXT_T] = False
    out = logits_fn(p, tokens, _positions(empty_valid), empty_valid, T2I)
    assert np.all(np.isfinite(out))


def test_text_only_input_gives_zero_vision_expert_gradient():
    """General path: both experts run on every token; `where` must cut the vision branch."""
    layout = None
    p = _params()
    tokens = np.random.default_rng(4).integers(0, 5000, (2, 10))
    positions, valid = _positions(np.ones((2, 10), bool)), np.ones((2, 10), bool)

    def loss(trainable, frozen):
        lg = mars.forward_logits(frozen, trainable, tokens, positions, valid, layout, CFG)
        return jnp.sum(jax.nn.log_softmax(lg)[..., 7])

    grads = jax.jit(jax.grad(loss))(p["trainable"], p["frozen"])
    for path, g in jax.tree_util.tree_flatten_with_path(grads["layers"])[0]:
        assert not np.any(np.asarray(g)), jax.tree_util.keystr(path)
    assert not np.any(np.asarray(grads["vision_embed"]))
    assert np.any(np.asarray(grads["vision_head"]))  # the joint softmax still reaches it
