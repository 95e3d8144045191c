"""Import PyTorch VQ-GAN checkpoints (taming-transformers, open-muse, diffusers) as VQ params.

    python -m mars_jax.vq.import_torch --src=<file or dir> --out=<dir> \
        [--layout=auto|taming|muse|diffusers] [--resolution=256] [--trust_pickle]

Every layout is first renamed to taming-transformers' key names (open-muse's ``VQGANModel``
already uses them), the architecture is read off the tensor shapes (and checked against a
``config.json`` where one exists), then each parameter of ``mars_jax.vq.model`` is filled from
its taming name with OIHW→HWIO (conv) or [out, in]→[in, out] (attention projection)
transposes. Safetensors files are read with ``safetensors.numpy``; ``.ckpt/.bin/.pt/.pth``
files need PyTorch, which is optional and imported only here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys

import numpy as np
import safetensors.numpy

from mars_jax.vq import checkpoint, model
from mars_jax.vq.checkpoint import VQCheckpointError
from mars_jax.vq.config import VQConfig

LAYOUTS = ("auto", "taming", "muse", "diffusers")
TORCH_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
_DIR_CANDIDATES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
    "last.ckpt",
    "model.ckpt",
)
# Training-only tensors of taming / open-muse checkpoints (discriminator, LPIPS, EMA buffers).
_IGNORED_PREFIXES = ("loss.", "discriminator.", "perceptual_loss.", "lpips.")


@dataclasses.dataclass
class ImportResult:
    cfg: VQConfig
    params: model.Params
    layout: str
    source: str
    unused_keys: list[str]


# ------------------------------------------------------------------------------ reading files


def _load_torch_file(path: str, trust_pickle: bool) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise VQCheckpointError(
            f"{path}: reading {os.path.splitext(path)[1]} files needs PyTorch "
            "(pip install torch); safetensors checkpoints do not"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # torch raises several unrelated types for bad files
        hint = "" if trust_pickle else " (if you trust this file, retry with --trust_pickle)"
        raise VQCheckpointError(f"{path}: cannot load torch checkpoint: {e}{hint}") from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise VQCheckpointError(f"{path}: no state dict found (got {type(obj).__name__})")
    return {
        k: v.detach().to(torch.float32).cpu().numpy()
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }


def _resolve_source(src: str) -> tuple[str, dict | None]:
    """Returns the weights file and the ``config.json`` beside it (if any)."""
    if os.path.isdir(src):
        for name in _DIR_CANDIDATES:
            if os.path.exists(os.path.join(src, name)):
                weights = os.path.join(src, name)
                break
        else:
            ckpts = sorted(
                f for f in os.listdir(src) if f.endswith(TORCH_SUFFIXES + (".safetensors",))
            )
            if not ckpts:
                raise VQCheckpointError(f"{src}: no checkpoint file (.safetensors/.ckpt/.bin/.pt)")
            weights = os.path.join(src, ckpts[0])
    elif os.path.isfile(src):
        weights = src
    else:
        raise VQCheckpointError(f"{src}: no such file or directory")
    config_path = os.path.join(os.path.dirname(weights), "config.json")
    config = None
    if os.path.exists(config_path):
        try:
            with open(config_path) as f:
                config = json.load(f)
        except json.JSONDecodeError as e:
            raise VQCheckpointError(f"{config_path}: not valid JSON: {e}") from e
    return weights, config


def read_state_dict(path: str, trust_pickle: bool = False) -> dict[str, np.ndarray]:
    if path.endswith(".safetensors"):
        try:
            return {k: v.astype(np.float32) for k, v in safetensors.numpy.load_file(path).items()}
        except Exception as e:
            raise VQCheckpointError(f"{path}: cannot read safetensors file: {e}") from e
    if path.endswith(TORCH_SUFFIXES):
        return _load_torch_file(path, trust_pickle)
    raise VQCheckpointError(
        f"{path}: unknown checkpoint format (want .safetensors or {TORCH_SUFFIXES})"
    )


# ------------------------------------------------------------------------------- renaming


def _strip_prefix(sd: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Drops a wrapper prefix such as ``first_stage_model.`` (found from ``encoder.conv_in``)."""
    anchor = "encoder.conv_in.weight"
    hits = [k for k in sd if k.endswith(anchor)]
    if not hits:
        raise VQCheckpointError(f"{source}: no '{anchor}' tensor; not a VQ-GAN checkpoint?")
    prefix = min(hits, key=len)[: -len(anchor)]
    if not prefix:
        return sd
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def detect_layout(sd: dict[str, np.ndarray], config: dict | None) -> str:
    if any(k.startswith("encoder.down_blocks.") for k in sd):
        return "diffusers"
    if config is not None and (
        "hidden_channels" in config or config.get("_class_name") == "VQGANModel"
    ):
        return "muse"
    return "taming"


_DIFFUSERS_RULES = [
    (r"\.resnets\.(\d+)\.conv_shortcut\.", r".resnets.\1.nin_shortcut."),
    (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1."),
    (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1."),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
    (r"^encoder\.down_blocks\.(\d+)\.attentions\.", r"encoder.down.\1.attn."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"\.conv_norm_out\.", r".norm_out."),
    (r"\.group_norm\.", r".norm."),
    (r"\.(to_q|query)\.", r".q."),
    (r"\.(to_k|key)\.", r".k."),
    (r"\.(to_v|value)\.", r".v."),
    (r"\.(to_out\.0|proj_attn)\.", r".proj_out."),
]


def diffusers_to_taming_names(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames a diffusers ``VQModel`` state dict to taming key names."""
    up_ids = {int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
    n_up = max(up_ids) + 1 if up_ids else 0
    out = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in _DIFFUSERS_RULES:
            new = re.sub(pattern, repl, new)
        # diffusers runs up_blocks from the lowest resolution; taming indexes ``up`` by level.
        m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|attentions|upsamplers\.0)\.(.*)", new)
        if m:
            level = n_up - 1 - int(m.group(1))
            part = {"resnets": "block", "attentions": "attn", "upsamplers.0": "upsample"}[
                m.group(2)
            ]
            new = f"decoder.up.{level}.{part}.{m.group(3)}"
        out[new] = value
    return out


# ------------------------------------------------------------------ architecture from shapes


def _indices(sd, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


def infer_config(
    sd: dict[str, np.ndarray], source: str, resolution: int = 256, norm_groups: int = 32
) -> VQConfig:
    """Reads the VQConfig off a taming-named state dict."""

    def shape(name):
        if name not in sd:
            raise VQCheckpointError(f"{source}: tensor {name!r} is missing")
        return sd[name].shape

    levels = _indices(sd, r"encoder\.down\.(\d+)\.")
    if not levels or levels != list(range(len(levels))):
        raise VQCheckpointError(f"{source}: encoder levels {levels} are not 0..n-1")
    base = shape("encoder.conv_in.weight")[0]
    level_channels = [shape(f"encoder.down.{i}.block.0.conv1.weight")[0] for i in levels]
    if any(c % base for c in level_channels):
        raise VQCheckpointError(
            f"{source}: level channels {level_channels} are not multiples of conv_in's {base}"
        )
    enc_attn = [bool(_indices(sd, rf"encoder\.down\.{i}\.attn\.(\d+)\.")) for i in levels]
    dec_attn = [bool(_indices(sd, rf"decoder\.up\.{i}\.attn\.(\d+)\.")) for i in levels]
    if enc_attn != dec_attn:
        raise VQCheckpointError(
            f"{source}: attention levels differ between encoder {enc_attn} and decoder "
            f"{dec_attn}; this architecture is not supported"
        )
    return VQConfig(
        in_channels=shape("encoder.conv_in.weight")[1],
        base_channels=base,
        ch_mult=tuple(c // base for c in level_channels),
        num_res_blocks=len(_indices(sd, r"encoder\.down\.0\.block\.(\d+)\.")),
        attn_resolutions=tuple(resolution // 2**i for i in levels if enc_attn[i]),
        mid_attention="encoder.mid.attn_1.q.weight" in sd,
        z_channels=shape("encoder.conv_out.weight")[0],
        embed_dim=shape("quant_conv.weight")[0],
        codebook_size=shape("quantize.embedding.weight")[0],
        resolution=resolution,
        norm_groups=norm_groups,
    )


def _check_diffusers_config(config: dict, source: str) -> None:
    problems = []
    if config.get("norm_type", "group") != "group":
        problems.append(f"norm_type={config['norm_type']!r} (only 'group' is supported)")
    if config.get("act_fn", "silu") != "silu":
        problems.append(f"act_fn={config['act_fn']!r} (only 'silu')")
    if config.get("out_channels", config.get("in_channels", 3)) != config.get("in_channels", 3):
        problems.append("out_channels differs from in_channels")
    for key, allowed in (
        ("down_block_types", {"DownEncoderBlock2D", "AttnDownEncoderBlock2D"}),
        ("up_block_types", {"UpDecoderBlock2D", "AttnUpDecoderBlock2D"}),
    ):
        bad = sorted(set(config.get(key, ())) - allowed)
        if bad:
            problems.append(f"{key} {bad} (supported: {sorted(allowed)})")
    if problems:
        raise VQCheckpointError(
            f"{source}: unsupported diffusers VQModel config: {'; '.join(problems)}"
        )


def _check_muse_config(config: dict, cfg: VQConfig, source: str) -> None:
    for key in (
        "decoder_res_blocks",
        "extra_mid_res_blocks",
        "decoder_hidden_channels",
        "decoder_channel_mult",
    ):
        if config.get(key) is not None:
            raise VQCheckpointError(
                f"{source}: open-muse option {key}={config[key]!r} is not supported"
            )
    if config.get("resample_with_conv", True) is not True:
        raise VQCheckpointError(f"{source}: open-muse resample_with_conv=False is not supported")
    # open-muse's DownsamplingBlock only applies level attention when it has 2+ blocks.
    if cfg.attn_resolutions and cfg.num_res_blocks < 2:
        raise VQCheckpointError(
            f"{source}: open-muse skips encoder attention when num_res_blocks < 2; "
            "that behaviour is not reproduced"
        )


# ------------------------------------------------------------------------ tensor conversion


def _taming_name(ours: str) -> str:
    if ours == "quantize.embedding":
        return "quantize.embedding.weight"
    stem, leaf = ours.rsplit(".", 1)
    return f"{stem}.{ {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}[leaf] }"


def taming_state_to_params(
    sd: dict[str, np.ndarray], cfg: VQConfig, source: str
) -> tuple[model.Params, list[str]]:
    """Fills every parameter of ``cfg`` from a taming-named state dict."""
    shapes = checkpoint.param_shapes(cfg)
    flat, used = {}, set()
    for ours, want in shapes.items():
        theirs = _taming_name(ours)
        if theirs not in sd:
            raise VQCheckpointError(f"{source}: tensor {theirs!r} (for {ours}) is missing")
        w = sd[theirs]
        used.add(theirs)
        if ours.endswith(".kernel") and len(want) == 4:  # conv OIHW → HWIO
            if w.ndim != 4:
                raise VQCheckpointError(
                    f"{source}: {theirs!r} has shape {w.shape}, want a 4-D conv"
                )
            w = w.transpose(2, 3, 1, 0)
        elif (
            ours.endswith(".kernel") and len(want) == 2
        ):  # 1×1 conv or linear [out, in] → [in, out]
            w = w.reshape(w.shape[0], -1).T
        if w.shape != tuple(want):
            raise VQCheckpointError(
                f"{source}: tensor {theirs!r} has shape {sd[theirs].shape}, which does not fit "
                f"{ours} {tuple(want)}"
            )
        flat[ours] = w
    unused = sorted(k for k in set(sd) - used if not k.startswith(_IGNORED_PREFIXES))
    return checkpoint.unflatten_params(cfg, flat, source), unused


def import_checkpoint(
    src: str, layout: str = "auto", resolution: int | None = None, trust_pickle: bool = False
) -> ImportResult:
    """Reads a PyTorch VQ-GAN checkpoint (file or directory) into ``(cfg, params)``."""
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {LAYOUTS}, got {layout!r}")
    weights, config = _resolve_source(src)
    sd = _strip_prefix(read_state_dict(weights, trust_pickle), weights)
    detected = detect_layout(sd, config)
    if layout == "auto":
        layout = detected
    elif (layout == "diffusers") != (detected == "diffusers"):
        raise VQCheckpointError(f"{weights}: --layout={layout} but the keys look like {detected}")
    norm_groups = 32
    if layout == "diffusers":
        if config is not None:
            _check_diffusers_config(config, weights)
            norm_groups = int(config.get("norm_num_groups", 32))
            resolution = resolution or config.get("sample_size")
        sd = diffusers_to_taming_names(sd)
    elif layout == "muse" and config is not None:
        resolution = resolution or config.get("resolution")
    if isinstance(resolution, (list, tuple)):
        resolution = resolution[0]
    cfg = infer_config(sd, weights, resolution=int(resolution or 256), norm_groups=norm_groups)
    if layout == "muse" and config is not None:
        _check_muse_config(config, cfg, weights)
    params, unused = taming_state_to_params(sd, cfg, weights)
    return ImportResult(cfg, params, layout, weights, unused)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="checkpoint file or directory")
    parser.add_argument("--out", required=True, help="output directory for save_vq")
    parser.add_argument("--layout", default="auto", choices=LAYOUTS)
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="training resolution (attention placement); default from config.json or 256",
    )
    parser.add_argument(
        "--trust_pickle", action="store_true", help="allow full pickle loading of torch files"
    )
    args = parser.parse_args(argv)
    try:
        result = import_checkpoint(args.src, args.layout, args.resolution, args.trust_pickle)
    except VQCheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    identity = checkpoint.save_vq(args.out, result.cfg, result.params)
    print(f"imported {result.source} ({result.layout} layout)")
    print(result.cfg)
    if result.unused_keys:
        print(f"ignored {len(result.unused_keys)} tensors, e.g. {result.unused_keys[:5]}")
    print(f"vq_identity={identity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
