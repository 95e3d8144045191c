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
import json
import os
import sys

from PIL import Image
from tqdm import tqdm

from mars_jax.demo import shapes

TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval_prompts.jsonl"
IMAGE_DIR = "images"


def build(out_dir: str, num_train: int, num_eval_scenes: int = 32, seed: int = 0) -> None:
    """Writes the files; rewriting the same arguments gives byte-identical output."""
    os.makedirs(os.path.join(out_dir, IMAGE_DIR), exist_ok=True)
    train_path = os.path.join(out_dir, TRAIN_FILE)
    with open(train_path + ".tmp", "w", encoding="utf-8") as f:
        for i in tqdm(range(num_train), desc="demo scenes", disable=num_train < 1000):
            spec, caption, lang = shapes.example(i, seed, "train")
            rel = f"{IMAGE_DIR}/{i:06d}.png"
            Image.fromarray(shapes.render(spec)).save(os.path.join(out_dir, rel))
            row = {"key": f"shapes-{seed}-{i}", "image": rel, "caption": caption, "lang": lang}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(train_path + ".tmp", train_path)
    eval_path = os.path.join(out_dir, EVAL_FILE)
    with open(eval_path + ".tmp", "w", encoding="utf-8") as f:
        for prompt in shapes.eval_prompts(num_eval_scenes, seed):
            f.write(json.dumps(prompt, ensure_ascii=False) + "\n")
    os.replace(eval_path + ".tmp", eval_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--num_train", type=int, required=True)
    p.add_argument("--num_eval_scenes", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num_train < 0 or args.num_eval_scenes < 0:
        p.error("--num_train and --num_eval_scenes must be >= 0")
    build(args.out, args.num_train, args.num_eval_scenes, args.seed)
    print(
        f"wrote {args.num_train} training scenes and {2 * args.num_eval_scenes} held-out "
        f"prompts to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
