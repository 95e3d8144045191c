"""Sampling CLI: prompts → PNG images (and a contact sheet) from a trained run.

    python -m mars_jax.generate --checkpoint=<workdir> --prompt="a red circle on the left" \
        --out=samples/ [--prompt-file=prompts.txt] [--num-per-prompt=4] [--cfg-scale=1.5] \
        [--temperature=1.0] [--top-k=0] [--top-p=1.0] [--seed=0] [--resolution=256x384]

The run's resolved config (saved in every checkpoint) says which model, text slot and VQ
tokenizer it used; the frozen LLM is reloaded from the base the run recorded and checked
against the recorded hash. `--resolution` is for stage-II models: the resolution goes into
the prompt as in training and sets the code grid. `--interleaved` continues each prompt
as text that may open images (paper §4.6). `--sr-from=<low-res image>` super-resolves with a
stage-III run, `--nktp=K` codes per pass, `--nktp-mode=fast|exact` (docs/NKTP.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from mars_jax import sampling


@dataclasses.dataclass
class LoadedRun:
    """Everything sampling needs from a training run directory."""

    config: object  # ml_collections.ConfigDict
    model_cfg: object
    frozen: dict
    trainable: dict
    step: int
    vq_cfg: object
    vq_params: dict
    grids: list[tuple[int, int]]
    text_len: int


def _latest_config(workdir: str) -> dict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--checkpoint={workdir}: no config.json (not a training workdir)")
    with open(path) as f:
        return json.load(f)


def load_run(workdir: str, vq_dir: str | None = None) -> LoadedRun:
    """Restore frozen + trainable params of the latest checkpoint in `workdir` on one device."""
    import jax
    import ml_collections

    from mars_jax.data.pipeline import load_manifest
    from mars_jax.train_lib import checkpoint as ckpt_lib
    from mars_jax.train_lib import loop
    from mars_jax.vq.checkpoint import load_vq

    config = ml_collections.ConfigDict(_latest_config(workdir))
    config.mesh.shape = (1, 1, 1)
    config.mesh.dcn_shape = (1, 1, 1)
    config.train.global_batch = max(1, int(config.train.grad_accum))
    # The run's own checkpoint holds every trained weight: the previous stage it started
    # from (a path relative to where it was trained) is not needed to sample.
    config.base.init_from = ""
    setup = loop.prepare(config, devices=jax.devices()[:1])
    with jax.set_mesh(setup.mesh):
        frozen, identity = loop.load_frozen(setup)
        manager = ckpt_lib.make_manager(workdir, 1, 0, False)
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"--checkpoint={workdir}: no checkpoint under checkpoints/")
        ckpt_lib.check_base(ckpt_lib.read_base_identity(manager, step), identity, workdir)
        manager.close()
        trainable, missing = ckpt_lib.load_trainable_from(
            workdir, setup.abstract_state["trainable"], setup.state_shardings["trainable"]
        )
    if missing:
        raise ValueError(f"--checkpoint={workdir}: checkpoint lacks trainable params {missing}")
    grids: list[tuple[int, int]] = []
    if config.data.get("shards"):
        manifest = load_manifest(config.data.shards)
        vq_dir = vq_dir or manifest.get("vq", {}).get("dir")
        grids = sorted({tuple(int(x) for x in b["grid"]) for b in manifest["buckets"].values()})
    if not vq_dir:
        raise ValueError(f"--checkpoint={workdir}: the run names no VQ tokenizer; pass --vq=<dir>")
    vq_cfg, vq_params = load_vq(vq_dir)
    if not grids:
        side = vq_cfg.resolution // vq_cfg.downsample_factor
        grids = [(side, side)]
    return LoadedRun(
        config=config,
        model_cfg=setup.model_cfg,
        frozen=frozen,
        trainable=trainable,
        step=int(step),
        vq_cfg=vq_cfg,
        vq_params=vq_params,
        grids=grids,
        text_len=int(config.data.text_len),
    )


def parse_resolution(text: str, factor: int) -> tuple[int, int]:
    """`"256x384"` (width x height) → code grid (h, w); both must be multiples of `factor`."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"--resolution={text!r}: expected WIDTHxHEIGHT, e.g. 256x384") from e
    if width % factor or height % factor:
        raise ValueError(
            f"--resolution={text!r}: sides must be multiples of the VQ factor {factor}"
        )
    return height // factor, width // factor


def generate_images(
    run: LoadedRun,
    prompts: Sequence[str],
    scfg: sampling.SamplingConfig,
    seed: int = 0,
    resolution: str | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """uint8 images `[len(prompts), H, W, 3]`, one per prompt, reproducible by `seed`."""
    import jax.numpy as jnp

    from mars_jax.text.tokenizer import load_tokenizer
    from mars_jax.tokens import formats

    tok = load_tokenizer()
    factor = run.vq_cfg.downsample_factor
    if resolution:
        grid = parse_resolution(resolution, factor)
        prompts = [
            formats.resolution_prompt(grid[1] * factor, grid[0] * factor, p) for p in prompts
        ]
    else:
        grid = run.grids[0]
    scfg = dataclasses.replace(scfg, codebook_size=run.vq_cfg.codebook_size)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids = [tok.encode(p) for p in chunk]
        codes = sampling.generate_codes(
            run.frozen, run.trainable, run.model_cfg, ids, run.text_len, grid, scfg, seed + start
        )
        out.append(vq_decode_uint8(run.vq_params, run.vq_cfg, jnp.asarray(codes)))
    return np.concatenate(out)


def vq_decode_uint8(vq_params: dict, vq_cfg, codes_Nxhxw) -> np.ndarray:
    """VQ-GAN decode to uint8 RGB `[N, H, W, 3]`."""
    from mars_jax.vq import model as vq_model

    images = np.asarray(vq_model.decode(vq_params, vq_cfg, codes_Nxhxw))
    return ((images + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def contact_sheet(images_NxHxWx3: np.ndarray, columns: int = 8, scale: int = 1) -> np.ndarray:
    """Images tiled row-major on a grey canvas with 2-px gutters (numbers in prompts.txt)."""
    n, h, w, _ = images_NxHxWx3.shape
    h, w = h * scale, w * scale
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    sheet = np.full((rows * (h + 2) + 2, columns * (w + 2) + 2, 3), 96, np.uint8)
    for i, img in enumerate(images_NxHxWx3):
        r, c = divmod(i, columns)
        big = img.repeat(scale, 0).repeat(scale, 1)
        sheet[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = big
    return sheet


def save_samples(out_dir: str, prompts: Sequence[str], images: np.ndarray) -> str:
    """One PNG per sample, `prompts.txt` (number: prompt), and `contact_sheet.png`."""
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    lines = []
    for i, (prompt, img) in enumerate(zip(prompts, images, strict=True)):
        Image.fromarray(img).save(os.path.join(out_dir, f"{i:04d}.png"))
        lines.append(f"{i:04d}\t{prompt}")
    with open(os.path.join(out_dir, "prompts.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    scale = max(1, 128 // images.shape[1])
    sheet_path = os.path.join(out_dir, "contact_sheet.png")
    Image.fromarray(contact_sheet(images, scale=scale)).save(sheet_path)
    return sheet_path


def read_prompts(prompt: list[str] | None, prompt_file: str | None) -> list[str]:
    prompts = list(prompt or [])
    if prompt_file:
        with open(prompt_file, encoding="utf-8") as f:
            prompts += [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ValueError("no prompt: pass --prompt=... or --prompt-file=...")
    return prompts


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """`--cfg-scale`, `--temperature`, `--top-k`, `--top-p`; unset ones come from the run."""
    for name, value in sampling.run_options({}).items():
        dash = name.replace("_", "-")
        p.add_argument(
            f"--{dash}", f"--{name}", dest=name, type=type(value), default=None,
            help=f"default: the run's sample.{name} (else {value})",
        )  # fmt: skip


def fill_sampling_args(args: argparse.Namespace, workdir: str) -> argparse.Namespace:
    """Options left unset take the run's `sample` settings: a preset's tuned sampling
    (e.g. the demo's temperature) then applies to `generate` and `evaluate` alike."""
    for name, value in sampling.run_options(_latest_config(workdir).get("sample")).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mars_jax.generate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--checkpoint", required=True, help="training workdir")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompt-file", "--prompt_file", dest="prompt_file", help="one prompt a line")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--num-per-prompt", "--num_per_prompt", dest="num_per_prompt", type=int, default=1
    )
    add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", default=None, help="WIDTHxHEIGHT for stage-II models")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    p.add_argument("--vq", default=None, help="VQ tokenizer dir (default: the run's)")
    p.add_argument(
        "--interleaved",
        action="store_true",
        help="joint text and image generation (paper §4.6): continue each prompt as text that "
        "may open images; writes interleaved_<n>.md with the text and images in order",
    )
    p.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=512)
    p.add_argument(
        "--sr-from",
        "--sr_from",
        dest="sr_from",
        default=None,
        help="stage-III models: super-resolve this low-res image (a file, or a folder of "
        "images, one prompt for all or one per image, in sorted order)",
    )
    p.add_argument("--nktp", type=int, default=0, help="codes per pass (0: the model's K)")
    p.add_argument(
        "--nktp-mode",
        "--nktp_mode",
        dest="nktp_mode",
        default="fast",
        choices=("fast", "exact"),
        help="fast: accept K drafted codes per pass; exact: keep those the next pass agrees with",
    )
    p.add_argument("--sr-sizes", "--sr_sizes", dest="sr_sizes", default=None, help="32x32:64x64")
    return p.parse_args(argv)


def read_low_res_images(path: str, lo_hw: tuple[int, int]) -> np.ndarray:
    """uint8 `[N, *lo_hw, 3]` from an image file or a folder of images (sorted)."""

    from mars_jax.data import image_ops

    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, f)
            for f in os.listdir(path)
            if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))
        )
        if not files:
            raise FileNotFoundError(f"--sr-from={path}: no .png/.jpg/.webp images in the folder")
    else:
        files = [path]
    return np.stack(
        [image_ops.resize_cover_crop(image_ops.load_rgb(f, f), lo_hw) for f in files]
    ).astype(np.uint8)


def run_super_resolution(args: argparse.Namespace, prompts: list[str]) -> int:
    """`--sr-from`: low-res image(s) + caption(s) → high-res image(s) with next-K decoding."""
    from mars_jax import cascade

    run = load_run(args.checkpoint, args.vq)
    sizes = cascade.sr_sizes_of_run(run)
    if args.sr_sizes:
        lo_hw, hi_hw = cascade.parse_sizes(args.sr_sizes)
    elif sizes:
        lo_hw, hi_hw = sizes[0]
    else:
        raise ValueError(f"--checkpoint={args.checkpoint}: no stage-III sizes; pass --sr-sizes")
    low = read_low_res_images(args.sr_from, lo_hw)
    if len(prompts) == 1:
        prompts = prompts * len(low)
    if len(prompts) != len(low):
        raise ValueError(f"--sr-from: {len(low)} images but {len(prompts)} prompts")
    scfg = sampling.SamplingConfig(
        cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
    )
    k = args.nktp or run.model_cfg.nktp_k
    high, _ = cascade.super_resolve(
        run, prompts, low, lo_hw, hi_hw, scfg, k, args.nktp_mode, args.seed, args.batch_size
    )
    sheet = cascade.save_cascade(args.out, prompts, low, high)
    print(f"wrote {len(high)} high-res images ({k} codes per pass, {args.nktp_mode}); {sheet}")
    return 0


def write_interleaved(out_dir: str, index: int, prompt: str, segments, run: LoadedRun) -> str:
    """Markdown with the text and the images of one continuation, in order."""
    import jax.numpy as jnp
    from PIL import Image

    from mars_jax.text.tokenizer import load_tokenizer

    tok = load_tokenizer()
    os.makedirs(out_dir, exist_ok=True)
    parts = [prompt]
    for j, seg in enumerate(segments):
        if seg.kind == "text":
            parts.append(tok.decode(seg.ids.tolist()))
            continue
        image = vq_decode_uint8(run.vq_params, run.vq_cfg, jnp.asarray(seg.ids[None]))[0]
        name = f"interleaved_{index:04d}_{j:02d}.png"
        Image.fromarray(image).save(os.path.join(out_dir, name))
        parts.append(f"\n\n![image {j}]({name})\n\n")
    path = os.path.join(out_dir, f"interleaved_{index:04d}.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(parts) + "\n")
    return path


def run_interleaved(args: argparse.Namespace, prompts: list[str]) -> int:
    from mars_jax import interleaved
    from mars_jax.text.tokenizer import load_tokenizer

    run = load_run(args.checkpoint, args.vq)
    tok = load_tokenizer()
    text_scfg = sampling.SamplingConfig(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
    )
    image_scfg = dataclasses.replace(text_scfg, codebook_size=run.vq_cfg.codebook_size)
    for i, prompt in enumerate(prompts):
        segments = interleaved.generate_interleaved(
            run.frozen, run.trainable, run.model_cfg, tok.encode(prompt), run.grids[0],
            text_scfg, image_scfg, args.max_tokens, args.seed + i,
        )  # fmt: skip
        print(write_interleaved(args.out, i, prompt, segments, run))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    fill_sampling_args(args, args.checkpoint)
    prompts = read_prompts(args.prompt, args.prompt_file)
    prompts = [p for p in prompts for _ in range(args.num_per_prompt)]
    if args.interleaved:
        return run_interleaved(args, prompts)
    if args.sr_from:
        return run_super_resolution(args, prompts)
    scfg = sampling.SamplingConfig(
        cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
    )
    run = load_run(args.checkpoint, args.vq)
    images = generate_images(run, prompts, scfg, args.seed, args.resolution, args.batch_size)
    sheet = save_samples(args.out, prompts, images)
    print(f"wrote {len(images)} images of step {run.step} to {args.out}; contact sheet {sheet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
