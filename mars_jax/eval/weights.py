"""Weight files for the evaluation networks: numpy/safetensors without torch, PyTorch with it.

torch is never a runtime dependency: ``.npz`` and ``.safetensors`` are read with numpy /
safetensors; ``.pth`` / ``.pt`` / ``.bin`` (pickled state dicts, and TorchScript archives such
as OpenAI's CLIP ``.pt``) import torch when asked, with a one-line error naming the way out
(``python -m mars_jax.eval.convert_weights``) when it is missing.
"""

from __future__ import annotations

import os
import warnings

import numpy as np


def load_state_dict_file(path: str) -> dict[str, np.ndarray]:
    """``.npz`` / ``.safetensors`` (no torch needed) or ``.pth`` / ``.pt`` (needs torch)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".npz"):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    if path.endswith((".pth", ".pt", ".bin")):
        return torch_state_dict(path)
    raise ValueError(f"{path}: expected a .npz, .safetensors or .pth file")


def torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict file as numpy arrays; torch is imported only here."""
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path}: reading a PyTorch .pth needs torch (pip install torch); or convert it "
            "once elsewhere: python -m mars_jax.eval.convert_weights <kind> in.pth out.npz"
        ) from None
    with warnings.catch_warnings():  # a TorchScript archive is dispatched to torch.jit.load
        warnings.simplefilter("ignore", UserWarning)
        state = torch.load(path, map_location="cpu", weights_only=True)
    if hasattr(state, "state_dict"):  # a TorchScript module (OpenAI's CLIP .pt)
        state = state.state_dict()
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def read_torch(path: str) -> dict[str, np.ndarray]:
    """A ``.pth``/``.bin`` state dict or an OpenAI TorchScript ``.pt`` → numpy arrays."""
    try:
        return torch_state_dict(path)
    except ImportError:
        raise
    except Exception as first:  # a TorchScript archive is not a pickle
        import torch

        try:
            module = torch.jit.load(path, map_location="cpu")
        except Exception:
            raise first from None
        return {k: v.detach().float().numpy() for k, v in module.state_dict().items()}


def write(state: dict[str, np.ndarray], path: str) -> None:
    if path.endswith(".npz"):
        np.savez(path, **state)
    elif path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
    else:
        raise ValueError(f"{path}: output must end in .npz or .safetensors")
