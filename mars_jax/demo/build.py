"""Write the demo data set to disk: PNG scenes, ``train.jsonl`` and ``eval_prompts.jsonl``.

    python -m mars_jax.demo.build --out=<dir> --num_train=4096 [--num_eval_scenes=32 --seed=0]
    python -m mars_jax.data.prepare --source=<dir>/train.jsonl ...

``train.jsonl`` rows are ``{"image": "images/000123.png", "caption", "lang", "key"}`` (image
paths relative to the file, as ``mars_jax.data.sources`` reads them). ``eval_prompts.jsonl``
holds the held-out prompts (combinations in ``shapes.is_held_out``), each scene in
English and Chinese, with the spec the pixel checker scores against. The same examples come
from ``shapes.make_dataset`` / ``shapes.eval_prompts`` without files.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import sys

from PIL import Image
from tqdm import tqdm

from mars_jax.demo import shapes

TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval_prompts.jsonl"
INFO_FILE = "build.json"  # the arguments of the build, checked when the scenes are reused
IMAGE_DIR = "images"
# Scenes per task of the worker processes; builds of fewer scenes than two chunks run inline.
CHUNK = 2000
# zlib level of the PNGs: the fastest (lossless at every level; the files are ~370 bytes).
PNG_COMPRESS_LEVEL = 1


def _write_scenes(out_dir: str, start: int, stop: int, seed: int, kind_mix: dict) -> list[str]:
    """Render and save training scenes ``[start, stop)``; their ``train.jsonl`` lines."""
    lines = []
    for i in range(start, stop):
        spec, caption, lang = shapes.example(i, seed, "train", kind_mix)
        rel = f"{IMAGE_DIR}/{i:06d}.png"
        path = os.path.join(out_dir, rel)
        Image.fromarray(shapes.render(spec)).save(path, compress_level=PNG_COMPRESS_LEVEL)
        row = {"key": f"shapes-{seed}-{i}", "image": rel, "caption": caption, "lang": lang}
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return lines


def _scene_chunks(out_dir: str, num_train: int, seed: int, kind_mix: dict, workers: int):
    """``train.jsonl`` lines chunk by chunk, in order; rendered by ``workers`` processes
    (each scene is seeded by its index, so the split changes no byte)."""
    bounds = [(a, min(a + CHUNK, num_train)) for a in range(0, num_train, CHUNK)]
    if workers <= 1 or len(bounds) < 2:
        for a, b in bounds:
            yield b - a, _write_scenes(out_dir, a, b, seed, kind_mix)
        return
    # spawn: the caller may hold JAX's threads, which a fork would copy mid-flight.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        jobs = [pool.submit(_write_scenes, out_dir, a, b, seed, kind_mix) for a, b in bounds]
        for (a, b), job in zip(bounds, jobs, strict=True):
            try:
                lines = job.result()
            except concurrent.futures.process.BrokenProcessPool:
                # A worker could not start (e.g. a parent run from stdin): render here.
                lines = _write_scenes(out_dir, a, b, seed, kind_mix)
            yield b - a, lines


def build(
    out_dir: str,
    num_train: int,
    num_eval_scenes: int = 32,
    seed: int = 0,
    kind_mix: dict[str, float] | None = None,
    workers: int | None = None,
) -> None:
    """Writes the files; rewriting the same arguments gives byte-identical output.

    ``kind_mix``: weights of the training scene kinds (default ``shapes.SCENE_KIND_PROBS``);
    the held-out prompts always follow the default mix, so scores stay comparable.
    ``workers``: processes rendering the scenes (default: one per CPU core).
    """
    kind_mix = shapes.check_kind_mix(kind_mix)
    os.makedirs(os.path.join(out_dir, IMAGE_DIR), exist_ok=True)
    train_path = os.path.join(out_dir, TRAIN_FILE)
    workers = (os.cpu_count() or 1) if workers is None else workers
    bar = tqdm(total=num_train, desc="demo scenes", disable=num_train < 1000)
    with open(train_path + ".tmp", "w", encoding="utf-8") as f, bar:
        for count, lines in _scene_chunks(out_dir, num_train, seed, kind_mix, workers):
            f.writelines(lines)
            bar.update(count)
    os.replace(train_path + ".tmp", train_path)
    eval_path = os.path.join(out_dir, EVAL_FILE)
    with open(eval_path + ".tmp", "w", encoding="utf-8") as f:
        for prompt in shapes.eval_prompts(num_eval_scenes, seed):
            f.write(json.dumps(prompt, ensure_ascii=False) + "\n")
    os.replace(eval_path + ".tmp", eval_path)
    info = {"num_train": num_train, "seed": seed, "kind_mix": kind_mix}
    with open(os.path.join(out_dir, INFO_FILE), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)


def parse_kind_mix(text: str) -> dict[str, float]:
    """``"single=0.3,relation=0.7"`` → ``{"single": 0.3, "relation": 0.7}``."""
    mix = {}
    for item in text.split(","):
        name, sep, weight = item.partition("=")
        if not sep:
            raise ValueError(f"expected kind=weight, got {item!r}")
        try:
            mix[name.strip()] = float(weight)
        except ValueError:
            raise ValueError(f"weight of {name.strip()!r} is not a number: {weight!r}") from None
    return mix


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--num_train", type=int, required=True)
    p.add_argument("--num_eval_scenes", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--kind_mix",
        default="",
        help="training scene kinds, e.g. single=0.3,count=0.1,relation=0.6 (default: "
        + ",".join(f"{k}={v}" for k, v in shapes.SCENE_KIND_PROBS.items())
        + ")",
    )
    args = p.parse_args(argv)
    if args.num_train < 0 or args.num_eval_scenes < 0:
        p.error("--num_train and --num_eval_scenes must be >= 0")
    try:
        kind_mix = parse_kind_mix(args.kind_mix) if args.kind_mix else None
        kind_mix = shapes.check_kind_mix(kind_mix)
    except ValueError as e:
        p.error(f"--kind_mix: {e}")
    build(args.out, args.num_train, args.num_eval_scenes, args.seed, kind_mix)
    print(
        f"wrote {args.num_train} training scenes and {2 * args.num_eval_scenes} held-out "
        f"prompts to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
