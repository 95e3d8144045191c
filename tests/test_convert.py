"""Hugging Face -> base checkpoint conversion: logit parity, Qwen-1 == Qwen-2 layout, errors."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from mars_jax import convert
from mars_jax.model import mars, params
from mars_jax.tokens import vocab
from mars_jax.train_lib import base as base_lib

HF_VOCAB = 1000


def _load(base_dir):
    """A base as the trainer sees it: config, frozen tree, the trainable init from it (with
    the base's real text rows) and the recorded hash."""
    info = base_lib.read_info(base_dir)
    cfg = base_lib.stored_config(base_dir)
    frozen = base_lib.read_frozen(base_dir, cfg=cfg)
    trainable = params.init_trainable_from_frozen(
        cfg, frozen, jax.random.key(0), num_text_rows=info["text_rows"]
    )
    return cfg, frozen, trainable, info["frozen_hash"]


def _qwen2_arrays(rng, layers=2, d=32, heads=4, kv=4, f=48, rows=HF_VOCAB):
    dh = d // heads
    t = lambda *s: rng.normal(0, 0.1, s).astype(np.float32)
    out = {
        "model.embed_tokens.weight": t(rows, d),
        "model.norm.weight": 1 + t(d),
        "lm_head.weight": t(rows, d),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update(
            {
                p + "input_layernorm.weight": 1 + t(d),
                p + "post_attention_layernorm.weight": 1 + t(d),
                p + "self_attn.q_proj.weight": t(heads * dh, d),
                p + "self_attn.q_proj.bias": t(heads * dh),
                p + "self_attn.k_proj.weight": t(kv * dh, d),
                p + "self_attn.k_proj.bias": t(kv * dh),
                p + "self_attn.v_proj.weight": t(kv * dh, d),
                p + "self_attn.v_proj.bias": t(kv * dh),
                p + "self_attn.o_proj.weight": t(d, heads * dh),
                p + "mlp.gate_proj.weight": t(f, d),
                p + "mlp.up_proj.weight": t(f, d),
                p + "mlp.down_proj.weight": t(d, f),
            }
        )
    config = {
        "model_type": "qwen2",
        "hidden_size": d,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "num_hidden_layers": layers,
        "intermediate_size": f,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "vocab_size": rows,
    }
    return out, config


def _qwen1_from_qwen2(arrays, config):
    """The same weights under Qwen-1 names: fused c_attn, w1 = up, w2 = gate, 2x FFN size."""
    out = {
        "transformer.wte.weight": arrays["model.embed_tokens.weight"],
        "transformer.ln_f.weight": arrays["model.norm.weight"],
        "lm_head.weight": arrays["lm_head.weight"],
    }
    for i in range(config["num_hidden_layers"]):
        a, p = f"model.layers.{i}.", f"transformer.h.{i}."
        out[p + "ln_1.weight"] = arrays[a + "input_layernorm.weight"]
        out[p + "ln_2.weight"] = arrays[a + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            out[p + f"attn.c_attn.{kind}"] = np.concatenate(
                [arrays[a + f"self_attn.{x}_proj.{kind}"] for x in "qkv"], axis=0
            )
        out[p + "attn.c_proj.weight"] = arrays[a + "self_attn.o_proj.weight"]
        out[p + "mlp.w1.weight"] = arrays[a + "mlp.up_proj.weight"]
        out[p + "mlp.w2.weight"] = arrays[a + "mlp.gate_proj.weight"]
        out[p + "mlp.c_proj.weight"] = arrays[a + "mlp.down_proj.weight"]
    d, heads = config["hidden_size"], config["num_attention_heads"]
    cfg1 = {
        "model_type": "qwen",
        "hidden_size": d,
        "num_attention_heads": heads,
        "num_hidden_layers": config["num_hidden_layers"],
        "intermediate_size": 2 * config["intermediate_size"],
        "kv_channels": d // heads,
        "layer_norm_epsilon": 1e-6,
        "rotary_emb_base": 10000,
        "vocab_size": HF_VOCAB,
    }
    return out, cfg1


def _write(dir_, arrays, config, shards=1):
    os.makedirs(dir_, exist_ok=True)
    with open(os.path.join(dir_, "config.json"), "w") as f:
        json.dump(config, f)
    names = sorted(arrays)
    if shards == 1:
        save_file(arrays, os.path.join(dir_, "model.safetensors"))
        return
    weight_map = {}
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: arrays[n] for n in names[s::shards]}
        save_file(part, os.path.join(dir_, fn))
        weight_map.update({n: fn for n in part})
    with open(os.path.join(dir_, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def test_hf_qwen2_logit_parity(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(
        vocab_size=HF_VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # random (non-zero) q/k/v biases and norm scales
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf_dir, out_dir = tmp_path / "hf", tmp_path / "base"
    model.save_pretrained(hf_dir, safe_serialization=True)
    assert convert.main([f"--hf={hf_dir}", f"--out={out_dir}", "--dtype=float32"]) == 0

    ids = np.random.default_rng(0).integers(0, HF_VOCAB, (2, 12))
    with torch.no_grad():
        expected = model(torch.tensor(ids)).logits.numpy()
    cfg, frozen, trainable, digest = _load(str(out_dir))
    assert cfg.num_kv_heads == 2 and cfg.compute_dtype == "float32"
    assert digest == base_lib.frozen_hash(frozen)
    positions = np.broadcast_to(np.arange(12), ids.shape)
    logits = mars.forward_logits(
        frozen, trainable, ids, positions, np.ones(ids.shape, bool), None, cfg
    )
    assert logits.shape == (2, 12, vocab.VOCAB_SIZE)
    np.testing.assert_allclose(np.asarray(logits[..., :HF_VOCAB]), expected, atol=1e-4, rtol=0)
    # Vision init: embedding rows are the mean of the real text rows, experts are copies.
    np.testing.assert_allclose(
        trainable["vision_embed"][5], np.mean(np.asarray(frozen["embed"][:HF_VOCAB]), 0), atol=1e-6
    )
    np.testing.assert_array_equal(
        trainable["layers"]["vision_mlp"]["up"], frozen["layers"]["text_mlp"]["up"]
    )


def test_qwen1_layout_converts_to_identical_params(tmp_path):
    arrays, config = _qwen2_arrays(np.random.default_rng(1))
    arrays1, config1 = _qwen1_from_qwen2(arrays, config)
    _write(tmp_path / "q2", arrays, config)
    _write(tmp_path / "q1", arrays1, config1, shards=2)
    h2 = convert.convert(str(tmp_path / "q2"), str(tmp_path / "b2"), "float32")
    h1 = convert.convert(str(tmp_path / "q1"), str(tmp_path / "b1"), "float32")
    assert h1 == h2
    c2, f2, t2, _ = _load(str(tmp_path / "b2"))
    c1, f1, t1, _ = _load(str(tmp_path / "b1"))
    assert c1 == c2
    jax.tree.map(np.testing.assert_array_equal, (f1, t1), (f2, t2))
    # Padding rows beyond the checkpoint's vocabulary are zero.
    assert not np.any(np.asarray(f1["embed"][HF_VOCAB:]))


def test_read_frozen_restores_into_shardings_and_dtypes(tmp_path):
    arrays, config = _qwen2_arrays(np.random.default_rng(2))
    _write(tmp_path / "hf", arrays, config)
    convert.convert(str(tmp_path / "hf"), str(tmp_path / "base"), "bfloat16")
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))

    cfg = base_lib.stored_config(str(tmp_path / "base"))
    spec = lambda axes: jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(*("fsdp" if a == "vocab" else None for a in axes))
    )
    shardings = jax.tree.map(spec, params.logical_axes(cfg), is_leaf=params.is_axes_leaf)
    frozen = base_lib.read_frozen(str(tmp_path / "base"), shardings["frozen"])
    assert frozen["embed"].dtype == np.dtype("bfloat16")
    assert frozen["embed"].sharding == shardings["frozen"]["embed"]
    assert len(frozen["embed"].addressable_shards) == 8
    assert frozen["embed"].addressable_shards[0].data.shape == (vocab.TEXT_VOCAB_SIZE // 8, 32)
    assert frozen["text_head"].sharding == shardings["frozen"]["text_head"]
    on_one = base_lib.read_frozen(str(tmp_path / "base"))
    jax.tree.map(np.testing.assert_array_equal, on_one, frozen)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda a, c: a.pop("model.layers.1.mlp.up_proj.weight"),
            "model.layers.1.mlp.up_proj.weight",
        ),
        (
            lambda a, c: a.__setitem__(
                "model.layers.0.self_attn.k_proj.bias", np.zeros(3, np.float32)
            ),
            "model.layers.0.self_attn.k_proj.bias",
        ),
        (
            lambda a, c: c.__setitem__("intermediate_size", 50),
            "model.layers.0.mlp.gate_proj.weight",
        ),
        (
            lambda a, c: a.__setitem__(
                "model.embed_tokens.weight", np.zeros((vocab.TEXT_VOCAB_SIZE + 1, 32), np.float32)
            ),
            "model.embed_tokens.weight",
        ),
        (
            lambda a, c: a.__setitem__("model.layers.0.extra.weight", np.zeros(2, np.float32)),
            "model.layers.0.extra.weight",
        ),
    ],
)
def test_convert_errors_name_the_tensor(tmp_path, capsys, edit, message):
    arrays, config = _qwen2_arrays(np.random.default_rng(3), layers=2)
    edit(arrays, config)
    _write(tmp_path / "hf", arrays, config)
    with pytest.raises(SystemExit) as exit_info:
        convert.main([f"--hf={tmp_path / 'hf'}", f"--out={tmp_path / 'out'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # the progress bar, then one error line
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in err
    assert not (tmp_path / "out").exists()
