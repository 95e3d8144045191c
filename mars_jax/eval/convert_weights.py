"""Convert PyTorch evaluation weights to torch-free files (run once where torch is installed).

    python -m mars_jax.eval.convert_weights inception pt_inception-2015-12-05-6726825d.pth inception.npz
    python -m mars_jax.eval.convert_weights clip ViT-L-14.pt clip-vit-l14.safetensors
    python -m mars_jax.eval.convert_weights clip clip-folder/pytorch_model.bin clip-folder/model.safetensors

The output keeps the input's tensor names (``.npz`` or ``.safetensors``), so
``mars_jax.eval.inception.load_params`` / ``mars_jax.eval.clip.load_clip`` read it as they
read the original; the network's loader checks every tensor before anything is written.
OpenAI ``.pt`` CLIP files are TorchScript archives (``torch.jit.load``).
"""

from __future__ import annotations

import argparse
import sys

from mars_jax.eval import clip, inception, weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("inception", "clip"))
    p.add_argument("src", help=".pth / .pt / .bin")
    p.add_argument("dst", help=".npz or .safetensors")
    args = p.parse_args(argv)
    if not args.dst.endswith((".npz", ".safetensors")):
        p.error(f"{args.dst}: output must end in .npz or .safetensors")
    try:
        state = weights.read_torch(args.src)
        if args.kind == "inception":
            inception.params_from_state_dict(state)  # raises naming a missing/mismatched tensor
        else:
            clip.config_from_state_dict(clip.normalize_state_dict(state))
    except (ImportError, OSError, KeyError, ValueError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 2
    weights.write(state, args.dst)
    print(f"wrote {len(state)} tensors to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
