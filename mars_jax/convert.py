"""Hugging Face Qwen-1 / Qwen-2 safetensors -> MARS base checkpoint (Orbax), and its loader.

    python -m mars_jax.convert --hf=<dir> --out=<dir> [--dtype=bfloat16]

Reads `config.json` and the `*.safetensors` files lazily, one tensor at a time, into
preallocated stacked arrays of the target dtype, so peak memory is about the size of the
converted frozen weights plus one tensor (≈17 GiB for Qwen-7B in bf16; measured 1.6 GiB
peak RSS for a 0.77 GiB model). The output directory holds:

    model_config.json   ModelConfig.to_dict()
    base_info.json      source directory, checkpoint family, sha256 of the frozen params
    frozen/             Orbax checkpoint of the frozen tree (frozen dtype)
    trainable/          Orbax checkpoint of the initial trainable tree

The vision experts start as exact copies of the text experts, so `trainable/` stores them
in the frozen dtype (lossless, and no fp32 copy of 7B weights in RAM); `load_base` casts the
trainable tree to `cfg.trainable_dtype` while restoring, directly into the target sharding.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from tqdm import tqdm

from mars_jax import cli
from mars_jax.model import params as params_lib
from mars_jax.model.config import ModelConfig
from mars_jax.tokens import vocab
from mars_jax.train_lib import base as base_lib

QWEN1 = "qwen1"
QWEN2 = "qwen2"


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the tensor or config key."""


# ---- reading the Hugging Face checkpoint -------------------------------------------------


class TensorReader:
    """Lazy access to the tensors of all safetensors files of a directory."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        index = os.path.join(hf_dir, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            self.file_of = {name: os.path.join(hf_dir, fn) for name, fn in weight_map.items()}
        else:
            files = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
            if not files:
                raise ConversionError(f"{hf_dir}: no *.safetensors files")
            self.file_of = {}
            for fn in files:
                path = os.path.join(hf_dir, fn)
                with safe_open(path, framework="np") as f:
                    self.file_of.update({name: path for name in f.keys()})
        self.used: set[str] = set()

    def shape(self, name: str) -> tuple[int, ...]:
        with safe_open(self._file(name), framework="np") as f:
            return tuple(f.get_slice(name).get_shape())

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name`, checked to have `shape` (the shape config.json implies)."""
        path = self._file(name)
        with safe_open(path, framework="np") as f:
            actual = tuple(f.get_slice(name).get_shape())
            if actual != tuple(shape):
                raise ConversionError(
                    f"tensor {name!r} in {path}: shape {actual}, but config.json implies {shape}"
                )
            self.used.add(name)
            return f.get_tensor(name)

    def has(self, name: str) -> bool:
        return name in self.file_of

    def _file(self, name: str) -> str:
        if name not in self.file_of:
            raise ConversionError(
                f"tensor {name!r} missing from {self.hf_dir} ({len(self.file_of)} tensors found)"
            )
        path = self.file_of[name]
        if not os.path.exists(path):
            raise ConversionError(f"tensor {name!r}: its file {path} does not exist")
        return path

    def unused(self) -> list[str]:
        return sorted(n for n in self.file_of if n not in self.used and "inv_freq" not in n)


def _require(hf: dict, key: str, path: str):
    if key not in hf:
        raise ConversionError(f"{path}: config key {key!r} missing")
    return hf[key]


def model_config_from_hf(hf: dict, path: str, dtype: str) -> tuple[str, ModelConfig]:
    """Checkpoint family and ModelConfig from a Hugging Face `config.json` dict."""
    family = QWEN1 if hf.get("model_type") == "qwen" or "kv_channels" in hf else QWEN2
    width = int(_require(hf, "hidden_size", path))
    heads = int(_require(hf, "num_attention_heads", path))
    common = dict(
        num_layers=int(_require(hf, "num_hidden_layers", path)),
        width=width,
        num_heads=heads,
        frozen_dtype=dtype,
        compute_dtype="float32" if dtype == "float32" else "bfloat16",
    )
    if family == QWEN1:
        if float(hf.get("rotary_pct", 1.0)) != 1.0:
            raise ConversionError(f"{path}: rotary_pct={hf['rotary_pct']} (only 1.0 supported)")
        intermediate = int(_require(hf, "intermediate_size", path))
        if intermediate % 2:
            raise ConversionError(
                f"{path}: intermediate_size={intermediate} must be even (Qwen-1 stores 2x FFN)"
            )
        cfg = ModelConfig(
            **common,
            num_kv_heads=heads,
            head_dim=int(hf.get("kv_channels", width // heads)),
            mlp_dim=intermediate // 2,
            rope_base=float(hf.get("rotary_emb_base", 10000.0)),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
        )
    else:
        rope = hf.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
            raise ConversionError(f"{path}: rope scaling {rope or hf['rope_scaling']} unsupported")
        if hf.get("use_sliding_window"):
            raise ConversionError(f"{path}: use_sliding_window=true is not supported")
        cfg = ModelConfig(
            **common,
            num_kv_heads=int(hf.get("num_key_value_heads", heads)),
            head_dim=int(hf.get("head_dim") or width // heads),
            mlp_dim=int(_require(hf, "intermediate_size", path)),
            rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        )
    return family, cfg


def _names(family: str, i: int) -> dict[str, str]:
    if family == QWEN1:
        p = f"transformer.h.{i}."
        return {
            "ln1": p + "ln_1.weight",
            "ln2": p + "ln_2.weight",
            "qkv": p + "attn.c_attn",
            "o": p + "attn.c_proj.weight",
            "gate": p + "mlp.w2.weight",
            "up": p + "mlp.w1.weight",
            "down": p + "mlp.c_proj.weight",
        }
    p = f"model.layers.{i}."
    return {
        "ln1": p + "input_layernorm.weight",
        "ln2": p + "post_attention_layernorm.weight",
        "q": p + "self_attn.q_proj",
        "k": p + "self_attn.k_proj",
        "v": p + "self_attn.v_proj",
        "o": p + "self_attn.o_proj.weight",
        "gate": p + "mlp.gate_proj.weight",
        "up": p + "mlp.up_proj.weight",
        "down": p + "mlp.down_proj.weight",
    }


def read_frozen(
    reader: TensorReader, family: str, cfg: ModelConfig, tie_embeddings: bool = False
) -> tuple[dict, int]:
    """Frozen tree (numpy, frozen dtype) and the number of real text-vocabulary rows."""
    dtype = jnp.dtype(cfg.frozen_dtype)
    d, h, kv, dh, f = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    shapes = params_lib.frozen_shapes(cfg)
    frozen = jax.tree.map(
        lambda s: np.zeros(s, dtype), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )
    lay, attn, mlp = frozen["layers"], frozen["layers"]["text_attn"], frozen["layers"]["text_mlp"]
    embed_name = "transformer.wte.weight" if family == QWEN1 else "model.embed_tokens.weight"
    norm_name = "transformer.ln_f.weight" if family == QWEN1 else "model.norm.weight"
    head_name = "lm_head.weight"
    rows = reader.shape(embed_name)[0]
    if rows > vocab.TEXT_VOCAB_SIZE:
        raise ConversionError(
            f"tensor {embed_name!r}: {rows} vocabulary rows > the text vocabulary "
            f"{vocab.TEXT_VOCAB_SIZE} of mars_jax.tokens.vocab"
        )
    cast = lambda x: np.asarray(x).astype(dtype)

    def layer(i: int) -> None:
        n = _names(family, i)
        lay["ln1"][i] = cast(reader.get(n["ln1"], (d,)))
        lay["ln2"][i] = cast(reader.get(n["ln2"], (d,)))
        if family == QWEN1:
            w = reader.get(n["qkv"] + ".weight", (3 * h * dh, d))
            b = reader.get(n["qkv"] + ".bias", (3 * h * dh,))
            ws, bs = np.split(w, 3, axis=0), np.split(b, 3)
        else:
            heads_of = {"q": h, "k": kv, "v": kv}
            ws = [reader.get(n[k] + ".weight", (heads_of[k] * dh, d)) for k in "qkv"]
            bs = [reader.get(n[k] + ".bias", (heads_of[k] * dh,)) for k in "qkv"]
        for key, m, w, b in zip("qkv", (h, kv, kv), ws, bs, strict=True):
            attn[key][i] = cast(w.T.reshape(d, m, dh))
            attn[key + "_bias"][i] = cast(b.reshape(m, dh))
        lay["o"][i] = cast(reader.get(n["o"], (d, h * dh)).T.reshape(h, dh, d))
        mlp["gate"][i] = cast(reader.get(n["gate"], (f, d)).T)
        mlp["up"][i] = cast(reader.get(n["up"], (f, d)).T)
        mlp["down"][i] = cast(reader.get(n["down"], (d, f)).T)

    steps: list[tuple[str, Callable[[], None]]] = [
        (
            embed_name,
            lambda: frozen["embed"].__setitem__(
                slice(0, rows), cast(reader.get(embed_name, (rows, d)))
            ),
        ),
        *[(f"layer {i}", lambda i=i: layer(i)) for i in range(cfg.num_layers)],
        (norm_name, lambda: frozen.__setitem__("final_norm", cast(reader.get(norm_name, (d,))))),
    ]
    if reader.has(head_name) or not tie_embeddings:
        steps.append(
            (
                head_name,
                lambda: frozen["text_head"].__setitem__(
                    (slice(None), slice(0, rows)), cast(reader.get(head_name, (rows, d)).T)
                ),
            )
        )
    else:
        steps.append(
            (
                "tied head",
                lambda: frozen["text_head"].__setitem__(
                    (slice(None), slice(0, rows)), frozen["embed"][:rows].T
                ),
            )
        )
    for _, step in tqdm(steps, desc="convert", unit="tensor group"):
        step()
    unused = reader.unused()
    if unused:
        raise ConversionError(f"unexpected tensors for a {family} checkpoint: {unused[:10]}")
    return frozen, rows


# ---- CLI -----------------------------------------------------------------------------------


def convert(hf_dir: str, out_dir: str, dtype: str = "bfloat16") -> str:
    """Convert `hf_dir` into a base checkpoint at `out_dir`; returns the frozen hash."""
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(config_path):
        raise ConversionError(f"{config_path}: missing")
    with open(config_path) as f:
        hf = json.load(f)
    family, cfg = model_config_from_hf(hf, config_path, dtype)
    reader = TensorReader(hf_dir)
    frozen, rows = read_frozen(reader, family, cfg, bool(hf.get("tie_word_embeddings", False)))
    info = {"source": os.path.abspath(hf_dir), "family": family, "text_rows": rows}
    return base_lib.save_base(out_dir, cfg, frozen, info)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("convert", __doc__)
    p.add_argument("--hf", required=True, help="Hugging Face checkpoint directory")
    p.add_argument("--out", required=True, help="output base checkpoint directory")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    with cli.one_line_errors():
        if not os.path.isdir(args.hf):
            raise cli.UsageError(f"--hf={args.hf}: no such directory")
        try:
            digest = convert(args.hf, args.out, args.dtype)
        except ConversionError as e:
            raise cli.UsageError(str(e)) from e
    print(f"wrote {os.path.abspath(args.out)} frozen_hash={digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
