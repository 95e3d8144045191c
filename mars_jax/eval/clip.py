"""OpenAI CLIP (ViT image tower, text tower) in JAX, for CLIP score; pure functions over params.

Loads a Hugging Face ``openai/clip-vit-*`` folder (``config.json``, ``model.safetensors`` or
``pytorch_model.bin`` (the latter needs torch), ``vocab.json`` + ``merges.txt``,
``preprocessor_config.json``): ``load_clip(folder)``; or an OpenAI ``ViT-*.pt`` (TorchScript,
needs torch; or its ``convert_weights`` output) with ``bpe_simple_vocab_16e6.txt.gz`` beside
it: ``load_clip(file)``. Any ViT shape works (B/32, B/16, L/14,
L/14-336); the shapes come from the weights, heads / activation / LayerNorm eps from
``config.json``. The network is HF's ``CLIPModel``: pre-LN transformer encoders, quick-GELU
MLPs, the image embedding is the projected post-LN class token, the text embedding the
projected final-LN state at the end-of-text token (causal attention).

CLIP score (Hessel et al. 2021; torchmetrics' ``CLIPScore``): for each (image, caption)
pair ``100 * max(cos(E_image, E_text), 0)``, averaged over pairs
(``mars_jax.eval.fid.clip_score``).

Image preprocessing (CLIP's): shortest side resized to the model's size (bicubic, PIL),
center crop, [0, 1], normalized by CLIP's mean/std (from ``preprocessor_config.json`` when
present). Text: CLIP's byte-level BPE read from the folder's ``vocab.json`` / ``merges.txt``
(``ClipTokenizer``: NFC, whitespace collapsed, lower-cased, as transformers'
``CLIPTokenizer``, whose ids the tests match; OpenAI's reference tokenizer also runs
``ftfy`` and HTML-unescapes, which changes nothing on plain captions), truncated to the
context length with the end token kept.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import unicodedata
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import regex

from mars_jax.eval import weights
from mars_jax.eval.inception import batched

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    width: int
    layers: int
    heads: int
    mlp: int
    act: str = "quick_gelu"
    ln_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    vision: TowerConfig
    text: TowerConfig
    image_size: int
    patch_size: int
    context_length: int
    vocab_size: int
    embed_dim: int
    eos_token_id: int  # HF semantics: 2 (legacy configs) pools at argmax(ids)


# ---------------------------------------------------------------------------------------
# Tokenizer.


@functools.lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte → printable unicode character table."""
    keep = list(range(ord("!"), ord("~") + 1))
    keep += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars), strict=True))


_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


class ClipTokenizer:
    """CLIP's BPE from ``vocab.json`` (token → id) and ``merges.txt`` (ranked pairs)."""

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]]):
        self.encoder = dict(vocab)
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.bos_id = self.encoder["<|startoftext|>"]
        self.eos_id = self.encoder["<|endoftext|>"]
        self.byte_encoder = _bytes_to_unicode()
        self.cache: dict[str, list[str]] = {}

    @classmethod
    def from_folder(cls, folder: str) -> ClipTokenizer:
        for name in ("vocab.json", "merges.txt"):
            if not os.path.exists(os.path.join(folder, name)):
                raise FileNotFoundError(f"CLIP folder {folder}: no {name} (the BPE tokenizer)")
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            lines = [ln.rstrip("\n") for ln in f]
        merges = [tuple(ln.split()) for ln in lines if ln and not ln.startswith("#version")]
        return cls(vocab, merges)

    @classmethod
    def from_openai_bpe(cls, path: str) -> ClipTokenizer:
        """OpenAI's ``bpe_simple_vocab_16e6.txt.gz``: its first 48,894 merges; the vocabulary
        is every byte, every byte word-final, each merge's result, then the two specials."""
        import gzip

        if not os.path.exists(path):
            raise FileNotFoundError(f"CLIP tokenizer: no {path}")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(ln.split()) for ln in lines[1 : 49152 - 256 - 2 + 1] if ln.strip()]
        chars = list(_bytes_to_unicode().values())
        tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
        tokens += ["<|startoftext|>", "<|endoftext|>"]
        return cls({t: i for i, t in enumerate(tokens)}, merges)

    def _bpe(self, token: str) -> list[str]:
        if token in self.cache:
            return self.cache[token]
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:], strict=True))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self.cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the start / end tokens."""
        text = " ".join(unicodedata.normalize("NFC", text).split()).lower()
        ids = []
        for piece in _PATTERN.findall(text):
            chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids += [self.encoder[t] for t in self._bpe(chars)]
        return ids

    def __call__(self, texts: Sequence[str], context_length: int) -> np.ndarray:
        """[N, context_length] int32: start, tokens (truncated), end, zero padding."""
        out = np.zeros((len(texts), context_length), np.int32)
        for i, text in enumerate(texts):
            ids = [self.bos_id, *self.encode(text)[: context_length - 2], self.eos_id]
            out[i, : len(ids)] = ids
        return out


# ---------------------------------------------------------------------------------------
# Weights.


def _hf_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"CLIP folder {folder}: no config.json")
    with open(path) as f:
        return json.load(f)


def read_hf_weights(folder: str) -> dict[str, np.ndarray]:
    """``model.safetensors`` (or a converted ``.npz``), else ``pytorch_model.bin`` (torch)."""
    for name in ("model.safetensors", "model.npz", "pytorch_model.bin"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return weights.load_state_dict_file(path)
    raise FileNotFoundError(
        f"CLIP folder {folder}: no model.safetensors, model.npz or pytorch_model.bin"
    )


def normalize_state_dict(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF names: drop ``position_ids`` buffers and a ``module.`` prefix; OpenAI names
    (``visual.conv1.weight``, ...) are renamed (``openai_to_hf``)."""
    state = {k.removeprefix("module."): np.asarray(v) for k, v in state.items()}
    if "visual.conv1.weight" in state:
        return openai_to_hf(state)
    return {k: v for k, v in state.items() if not k.endswith("position_ids")}


_OPENAI_BLOCK = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}  # fmt: skip


def openai_to_hf(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An OpenAI CLIP state dict (``clip.load``'s model, or its TorchScript ``.pt``) → HF
    ``CLIPModel`` names: fused ``in_proj`` split into q/k/v, projections transposed to
    [out, in]. The ``.pt``'s ``input_resolution`` / ``context_length`` / ``vocab_size``
    entries are dropped."""
    out = {}
    towers = (("visual.transformer.resblocks.", "vision_model"), ("transformer.resblocks.", "text_model"))  # fmt: skip
    for key, value in state.items():
        for src, dst in towers:
            if key.startswith(src):
                i, rest = key[len(src) :].split(".", 1)
                base = f"{dst}.encoder.layers.{i}"
                if rest.startswith("attn.in_proj_"):
                    kind = rest.rsplit("_", 1)[1]  # weight | bias
                    for name, part in zip("qkv", np.split(value, 3, axis=0), strict=True):
                        out[f"{base}.self_attn.{name}_proj.{kind}"] = part
                else:
                    module, kind = rest.rsplit(".", 1)
                    if module not in _OPENAI_BLOCK:
                        raise KeyError(f"CLIP weights: unexpected tensor {key!r}")
                    out[f"{base}.{_OPENAI_BLOCK[module]}.{kind}"] = value
                break
        else:
            simple = {
                "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
                "visual.class_embedding": "vision_model.embeddings.class_embedding",
                "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
                "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
                "positional_embedding": "text_model.embeddings.position_embedding.weight",
                "logit_scale": "logit_scale",
            }
            lns = {"visual.ln_pre": "vision_model.pre_layrnorm", "visual.ln_post": "vision_model.post_layernorm", "ln_final": "text_model.final_layer_norm"}  # fmt: skip
            if key in simple:
                out[simple[key]] = value
            elif key == "visual.proj":
                out["visual_projection.weight"] = value.T
            elif key == "text_projection":
                out["text_projection.weight"] = value.T
            elif key.rsplit(".", 1)[0] in lns:
                out[f"{lns[key.rsplit('.', 1)[0]]}.{key.rsplit('.', 1)[1]}"] = value
            elif key in ("input_resolution", "context_length", "vocab_size"):
                continue
            else:
                raise KeyError(f"CLIP weights: unexpected tensor {key!r}")
    return out


def openai_hf_config(state_hf: dict[str, np.ndarray]) -> dict:
    """OpenAI's fixed choices as a ``config.json``: 64-wide heads, quick GELU, eps 1e-5,
    end token = the last id."""
    vw = state_hf["vision_model.embeddings.patch_embedding.weight"].shape[0]
    tok = state_hf["text_model.embeddings.token_embedding.weight"]
    return {
        "vision_config": {"num_attention_heads": vw // 64},
        "text_config": {
            "num_attention_heads": tok.shape[1] // 64,
            "eos_token_id": tok.shape[0] - 1,
        },
    }


def _get(state: dict[str, np.ndarray], key: str, shape: tuple | None = None) -> np.ndarray:
    if key not in state:
        raise KeyError(f"CLIP weights: missing tensor {key!r}")
    arr = np.asarray(state[key], np.float32)
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"CLIP weights: tensor {key!r} has shape {arr.shape}, expected {shape}")
    return arr


def _count_layers(state: dict[str, np.ndarray], prefix: str) -> int:
    n = 0
    while f"{prefix}.{n}.layer_norm1.weight" in state:
        n += 1
    if n == 0:
        raise KeyError(f"CLIP weights: missing tensor '{prefix}.0.layer_norm1.weight'")
    return n


def config_from_state_dict(state: dict[str, np.ndarray], hf: dict | None = None) -> ClipConfig:
    """Shapes from the weights; heads, activation, eps and end token from ``config.json``."""
    hf = hf or {}
    # Older HF CLIP configs also carry *_config_dict, which transformers lets override.
    vc = {**(hf.get("vision_config") or {}), **(hf.get("vision_config_dict") or {})}
    tc = {**(hf.get("text_config") or {}), **(hf.get("text_config_dict") or {})}
    patch = _get(state, "vision_model.embeddings.patch_embedding.weight")
    pos_v = _get(state, "vision_model.embeddings.position_embedding.weight")
    tok = _get(state, "text_model.embeddings.token_embedding.weight")
    pos_t = _get(state, "text_model.embeddings.position_embedding.weight")
    proj = _get(state, "visual_projection.weight")
    vw, tw = patch.shape[0], tok.shape[1]
    grid = round((pos_v.shape[0] - 1) ** 0.5)
    if grid * grid + 1 != pos_v.shape[0]:
        raise ValueError(f"CLIP weights: {pos_v.shape[0]} image positions is not a square + 1")

    def tower(c: dict, prefix: str, width: int) -> TowerConfig:
        return TowerConfig(
            width=width,
            layers=_count_layers(state, f"{prefix}.encoder.layers"),
            heads=int(c.get("num_attention_heads", max(1, width // 64))),
            mlp=_get(state, f"{prefix}.encoder.layers.0.mlp.fc1.weight").shape[0],
            act=c.get("hidden_act", "quick_gelu"),
            ln_eps=float(c.get("layer_norm_eps", 1e-5)),
        )

    return ClipConfig(
        vision=tower(vc, "vision_model", vw),
        text=tower(tc, "text_model", tw),
        image_size=grid * patch.shape[2],
        patch_size=patch.shape[2],
        context_length=pos_t.shape[0],
        vocab_size=tok.shape[0],
        embed_dim=proj.shape[0],
        eos_token_id=int(tc.get("eos_token_id", tok.shape[0] - 1)),
    )


def _ln(state, key, width):
    return {"scale_D": _get(state, f"{key}.weight", (width,)), "bias_D": _get(state, f"{key}.bias", (width,))}  # fmt: skip


def _tower_params(state, prefix: str, t: TowerConfig) -> list[dict]:
    layers = []
    d = t.width
    for i in range(t.layers):
        p = f"{prefix}.encoder.layers.{i}"
        layer = {"ln1": _ln(state, f"{p}.layer_norm1", d), "ln2": _ln(state, f"{p}.layer_norm2", d)}
        for name in ("q", "k", "v", "out"):
            layer[f"{name}_w_DxD"] = _get(state, f"{p}.self_attn.{name}_proj.weight", (d, d)).T
            layer[f"{name}_b_D"] = _get(state, f"{p}.self_attn.{name}_proj.bias", (d,))
        layer["fc1_w_DxF"] = _get(state, f"{p}.mlp.fc1.weight", (t.mlp, d)).T
        layer["fc1_b_F"] = _get(state, f"{p}.mlp.fc1.bias", (t.mlp,))
        layer["fc2_w_FxD"] = _get(state, f"{p}.mlp.fc2.weight", (d, t.mlp)).T
        layer["fc2_b_D"] = _get(state, f"{p}.mlp.fc2.bias", (d,))
        layers.append(layer)
    return layers


def params_from_state_dict(
    state: dict[str, np.ndarray], cfg: ClipConfig, to_device: bool = True
) -> dict:
    """HF ``CLIPModel`` state dict → params (linear weights as [in, out]; numpy arrays with
    ``to_device=False``: a host-only check of a weights file)."""
    v, t = cfg.vision, cfg.text
    grid = cfg.image_size // cfg.patch_size
    pe = "vision_model.embeddings"
    vision = {
        "patch_w_PxPx3xD": _get(
            state, f"{pe}.patch_embedding.weight", (v.width, 3, cfg.patch_size, cfg.patch_size)
        ).transpose(2, 3, 1, 0),
        "cls_D": _get(state, f"{pe}.class_embedding", (v.width,)),
        "pos_TxD": _get(state, f"{pe}.position_embedding.weight", (grid * grid + 1, v.width)),
        "ln_pre": _ln(state, "vision_model.pre_layrnorm", v.width),
        "layers": _tower_params(state, "vision_model", v),
        "ln_post": _ln(state, "vision_model.post_layernorm", v.width),
        "proj_DxE": _get(state, "visual_projection.weight", (cfg.embed_dim, v.width)).T,
    }
    te = "text_model.embeddings"
    text = {
        "tok_VxD": _get(state, f"{te}.token_embedding.weight", (cfg.vocab_size, t.width)),
        "pos_TxD": _get(state, f"{te}.position_embedding.weight", (cfg.context_length, t.width)),
        "layers": _tower_params(state, "text_model", t),
        "ln_final": _ln(state, "text_model.final_layer_norm", t.width),
        "proj_DxE": _get(state, "text_projection.weight", (cfg.embed_dim, t.width)).T,
    }
    params = {"vision": vision, "text": text}
    return jax.tree.map(jnp.asarray, params) if to_device else params


VIT_B32 = ClipConfig(
    vision=TowerConfig(768, 12, 12, 3072), text=TowerConfig(512, 12, 8, 2048),
    image_size=224, patch_size=32, context_length=77, vocab_size=49408, embed_dim=512,
    eos_token_id=49407,
)  # fmt: skip
VIT_L14 = ClipConfig(
    vision=TowerConfig(1024, 24, 16, 4096), text=TowerConfig(768, 12, 12, 3072),
    image_size=224, patch_size=14, context_length=77, vocab_size=49408, embed_dim=768,
    eos_token_id=49407,
)  # fmt: skip


def random_state_dict(cfg: ClipConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """A random HF-named state dict of ``cfg``'s shapes (benchmarks, tests; no download)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32

    def w(*shape, scale=None):
        return (rng.normal(size=shape) * (scale or shape[-1] ** -0.5)).astype(f32)

    state = {}
    grid = cfg.image_size // cfg.patch_size
    pe, te = "vision_model.embeddings", "text_model.embeddings"
    state[f"{pe}.patch_embedding.weight"] = w(
        cfg.vision.width, 3, cfg.patch_size, cfg.patch_size, scale=(3 * cfg.patch_size**2) ** -0.5
    )
    state[f"{pe}.class_embedding"] = w(cfg.vision.width, scale=0.02)
    state[f"{pe}.position_embedding.weight"] = w(grid * grid + 1, cfg.vision.width, scale=0.02)
    state[f"{te}.token_embedding.weight"] = w(cfg.vocab_size, cfg.text.width, scale=0.02)
    state[f"{te}.position_embedding.weight"] = w(cfg.context_length, cfg.text.width, scale=0.01)
    for prefix, t in (("vision_model", cfg.vision), ("text_model", cfg.text)):
        for i in range(t.layers):
            p = f"{prefix}.encoder.layers.{i}"
            for ln in ("layer_norm1", "layer_norm2"):
                state[f"{p}.{ln}.weight"] = np.ones(t.width, f32)
                state[f"{p}.{ln}.bias"] = np.zeros(t.width, f32)
            for name in ("q", "k", "v", "out"):
                state[f"{p}.self_attn.{name}_proj.weight"] = w(t.width, t.width)
                state[f"{p}.self_attn.{name}_proj.bias"] = np.zeros(t.width, f32)
            state[f"{p}.mlp.fc1.weight"] = w(t.mlp, t.width)
            state[f"{p}.mlp.fc1.bias"] = np.zeros(t.mlp, f32)
            state[f"{p}.mlp.fc2.weight"] = w(t.width, t.mlp)
            state[f"{p}.mlp.fc2.bias"] = np.zeros(t.width, f32)
    for ln, width in (
        ("vision_model.pre_layrnorm", cfg.vision.width),
        ("vision_model.post_layernorm", cfg.vision.width),
        ("text_model.final_layer_norm", cfg.text.width),
    ):
        state[f"{ln}.weight"] = np.ones(width, f32)
        state[f"{ln}.bias"] = np.zeros(width, f32)
    state["visual_projection.weight"] = w(cfg.embed_dim, cfg.vision.width)
    state["text_projection.weight"] = w(cfg.embed_dim, cfg.text.width)
    state["logit_scale"] = np.asarray(np.log(100.0), f32)
    return state


def hf_config_dict(cfg: ClipConfig) -> dict:
    """``config.json`` content for ``cfg`` (what ``random_state_dict`` folders carry)."""

    def tower(t: TowerConfig) -> dict:
        return {
            "hidden_size": t.width, "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads, "intermediate_size": t.mlp,
            "hidden_act": t.act, "layer_norm_eps": t.ln_eps,
        }  # fmt: skip

    return {
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "vision_config": {
            **tower(cfg.vision), "image_size": cfg.image_size, "patch_size": cfg.patch_size
        },
        "text_config": {
            **tower(cfg.text), "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.context_length, "eos_token_id": cfg.eos_token_id,
        },
    }  # fmt: skip


def write_byte_vocab(folder: str) -> int:
    """A merge-free byte-level BPE vocabulary (``vocab.json``, ``merges.txt``) in ``folder``:
    every byte alone and word-final, and the two special tokens. Returns its size."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return len(tokens)


def write_random_folder(folder: str, cfg: ClipConfig, seed: int = 0) -> None:
    """A loadable HF-style CLIP folder of random weights (tests and benchmarks only)."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf_config_dict(cfg), f, indent=1)
    save_file(random_state_dict(cfg, seed), os.path.join(folder, "model.safetensors"))


# ---------------------------------------------------------------------------------------
# Forward.


def _act(name: str, x: jax.Array) -> jax.Array:
    if name == "quick_gelu":
        return x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return jax.nn.gelu(x, approximate=True)
    raise ValueError(f"CLIP: unsupported activation {name!r}")


def _layer_norm(p: dict, x: jax.Array, eps: float) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale_D"] + p["bias_D"]


def _encoder(layers: list[dict], x_BxTxD: jax.Array, t: TowerConfig, causal: bool) -> jax.Array:
    b, n, d = x_BxTxD.shape
    hd = d // t.heads
    hp = jax.lax.Precision.HIGHEST
    mask = jnp.tril(jnp.ones((n, n), bool)) if causal else None
    for p in layers:
        h = _layer_norm(p["ln1"], x_BxTxD, t.ln_eps)
        q, k, v = (
            (jnp.einsum("btd,de->bte", h, p[f"{s}_w_DxD"], precision=hp) + p[f"{s}_b_D"]).reshape(
                b, n, t.heads, hd
            )
            for s in ("q", "k", "v")
        )
        logits = jnp.einsum("bqhc,bkhc->bhqk", q * hd**-0.5, k, precision=hp)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        attn = jax.nn.softmax(logits, axis=-1)
        o = jnp.einsum("bhqk,bkhc->bqhc", attn, v, precision=hp).reshape(b, n, d)
        x_BxTxD = (
            x_BxTxD + jnp.einsum("btd,de->bte", o, p["out_w_DxD"], precision=hp) + p["out_b_D"]
        )
        h = _layer_norm(p["ln2"], x_BxTxD, t.ln_eps)
        h = _act(t.act, jnp.einsum("btd,df->btf", h, p["fc1_w_DxF"], precision=hp) + p["fc1_b_F"])
        x_BxTxD = (
            x_BxTxD + jnp.einsum("btf,fd->btd", h, p["fc2_w_FxD"], precision=hp) + p["fc2_b_D"]
        )
    return x_BxTxD


@functools.partial(jax.jit, static_argnames=("cfg",))
def image_embeddings(params: dict, pixels_BxHxWx3: jax.Array, cfg: ClipConfig) -> jax.Array:
    """Normalized pixels (``preprocess_images``) → unnormalized image embeddings [B, E]."""
    p = params["vision"]
    ps = cfg.patch_size
    x = jax.lax.conv_general_dilated(
        pixels_BxHxWx3, p["patch_w_PxPx3xD"], (ps, ps), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST,
    )  # fmt: skip
    b = x.shape[0]
    x = x.reshape(b, -1, x.shape[-1])
    cls = jnp.broadcast_to(p["cls_D"], (b, 1, x.shape[-1])).astype(x.dtype)
    x = jnp.concatenate([cls, x], axis=1) + p["pos_TxD"]
    x = _layer_norm(p["ln_pre"], x, cfg.vision.ln_eps)
    x = _encoder(p["layers"], x, cfg.vision, causal=False)
    pooled = _layer_norm(p["ln_post"], x[:, 0], cfg.vision.ln_eps)
    return jnp.dot(pooled, p["proj_DxE"], precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=("cfg",))
def text_embeddings(params: dict, ids_BxT: jax.Array, cfg: ClipConfig) -> jax.Array:
    """Token ids (``ClipTokenizer``) → unnormalized text embeddings [B, E]."""
    p = params["text"]
    n = ids_BxT.shape[1]
    x = p["tok_VxD"][ids_BxT] + p["pos_TxD"][:n]
    x = _encoder(p["layers"], x, cfg.text, causal=True)
    x = _layer_norm(p["ln_final"], x, cfg.text.ln_eps)
    if cfg.eos_token_id == 2:  # legacy HF configs: the end token has the largest id
        at = jnp.argmax(ids_BxT, axis=-1)
    else:
        at = jnp.argmax(ids_BxT == cfg.eos_token_id, axis=-1)
    pooled = x[jnp.arange(x.shape[0]), at]
    return jnp.dot(pooled, p["proj_DxE"], precision=jax.lax.Precision.HIGHEST)


def preprocess_images(
    images_NxHxWx3: np.ndarray, size: int, mean=CLIP_MEAN, std=CLIP_STD
) -> np.ndarray:
    """uint8 RGB → CLIP input: shortest side to ``size`` (bicubic), center crop, normalized."""
    from PIL import Image

    out = np.empty((len(images_NxHxWx3), size, size, 3), np.float32)
    for i, image in enumerate(images_NxHxWx3):
        h, w = image.shape[:2]
        if (h, w) != (size, size):
            # transformers' shortest-edge rule: the long side is int(size * long / short)
            nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
            im = Image.fromarray(np.asarray(image)).resize((nw, nh), Image.BICUBIC)
            top, left = (nh - size) // 2, (nw - size) // 2
            image = np.asarray(im)[top : top + size, left : left + size]
        out[i] = np.asarray(image, np.float32) / 255.0
    return (out - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


@dataclasses.dataclass
class ClipModel:
    """A loaded CLIP: ``image_features`` / ``text_features`` (the ``FeatureExtractor`` seam)."""

    cfg: ClipConfig
    params: dict
    tokenizer: ClipTokenizer | None
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD
    batch_size: int = 32
    name: str = "clip"

    def image_features(self, images_NxHxWx3: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images_NxHxWx3), self.batch_size):
            chunk = images_NxHxWx3[start : start + self.batch_size]
            pixels = preprocess_images(chunk, self.cfg.image_size, self.mean, self.std)
            (pixels, n), *_ = batched(pixels, self.batch_size)
            out.append(np.asarray(image_embeddings(self.params, pixels, self.cfg))[:n])
        return np.concatenate(out) if out else np.zeros((0, self.cfg.embed_dim), np.float32)

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        if self.tokenizer is None:
            raise ValueError("this CLIP was loaded without a tokenizer (vocab.json, merges.txt)")
        ids = self.tokenizer(list(texts), self.cfg.context_length)
        out = []
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - n, 0)])
            out.append(np.asarray(text_embeddings(self.params, chunk, self.cfg))[:n])
        return np.concatenate(out) if out else np.zeros((0, self.cfg.embed_dim), np.float32)


OPENAI_BPE = "bpe_simple_vocab_16e6.txt.gz"


def load_openai_clip(path: str, batch_size: int = 32, to_device: bool = True) -> ClipModel:
    """An OpenAI CLIP file: the TorchScript ``.pt`` of ``clip.load`` (needs torch) or its
    conversion to ``.safetensors`` / ``.npz``, with OpenAI's ``bpe_simple_vocab_16e6.txt.gz``
    beside it."""
    if path.endswith((".pt", ".pth", ".bin")):
        state = weights.read_torch(path)
    else:
        state = weights.load_state_dict_file(path)
    state = normalize_state_dict(state)
    cfg = config_from_state_dict(state, openai_hf_config(state))
    tokenizer = ClipTokenizer.from_openai_bpe(os.path.join(os.path.dirname(path), OPENAI_BPE))
    name = os.path.splitext(os.path.basename(path))[0]
    params = params_from_state_dict(state, cfg, to_device)
    return ClipModel(cfg, params, tokenizer, batch_size=batch_size, name=name)


def load_clip(folder: str, batch_size: int = 32, to_device: bool = True) -> ClipModel:
    """A Hugging Face CLIP folder (see the module docstring), or an OpenAI CLIP file
    (``load_openai_clip``) → ``ClipModel``."""
    if os.path.isfile(folder):
        return load_openai_clip(folder, batch_size, to_device)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"CLIP folder not found: {folder}")
    hf = _hf_config(folder)
    state = normalize_state_dict(read_hf_weights(folder))
    cfg = config_from_state_dict(state, hf)
    params = params_from_state_dict(state, cfg, to_device)
    mean, std = CLIP_MEAN, CLIP_STD
    pre = os.path.join(folder, "preprocessor_config.json")
    if os.path.exists(pre):
        with open(pre) as f:
            pc = json.load(f)
        mean, std = tuple(pc.get("image_mean", mean)), tuple(pc.get("image_std", std))
    tokenizer = ClipTokenizer.from_folder(folder)
    name = hf.get("_name_or_path") or os.path.basename(os.path.normpath(folder))
    return ClipModel(cfg, params, tokenizer, mean, std, batch_size, name)
