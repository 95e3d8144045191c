"""Captioning CLI: images → text with a trained model (the stage-I image → text task).

    python -m mars_jax.caption --checkpoint=<run | run/checkpoints/N | bundle> \
        --image=a.png [--image=photos/] [--lang=en] [--out=captions.jsonl] [--temperature=0] \
        [--candidates=8]

Each image is resized and centre-cropped to the model's trained size, VQ-encoded, and
captioned from `<img> codes <end>` with the KV-cached decoder: greedy by default
(`--temperature=0`), else temperature / top-k / top-p sampling. `--lang=en` or `zh` keeps
every drawn token in that language (default `any`: the model's choice). Prints one
`<file>\\t<caption>` line per image; `--out` writes jsonl (`{"image", "caption"}`).
`--candidates=N` writes N captions per image (the one above and N - 1 drawn at
`--temperature`, 1 when it is 0) and keeps the one that best explains the image both ways,
`log p(caption | image) + log p(image | caption)` (`sampling/rerank.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tqdm import tqdm

from mars_jax import cli, runs, sample_flags
from mars_jax.sampling import images as images_lib
from mars_jax.text import languages


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = cli.parser("caption", __doc__)
    sample_flags.add_checkpoint_args(p)
    p.add_argument("--image", action="append", required=True, help="an image or a folder")
    p.add_argument("--out", default=None, help="jsonl file of {image, caption} lines")
    p.add_argument(
        "--lang",
        default=languages.ANY,
        choices=(languages.ANY, *languages.LANGUAGES),
        help="the caption's language (any: the model's choice)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument(
        "--candidates", type=int, default=None,
        help="captions written per image, the one that best explains the image both ways "
        "kept (default: the model's sample.caption_candidates, else 1)",
    )  # fmt: skip
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.max_tokens < 1 or args.batch_size < 1:
        p.error("--max_tokens and --batch_size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with cli.one_line_errors():
        runs.locate(args.checkpoint, args.step)
        sample_flags.fill_caption_candidates(args, args.checkpoint)
        scfg = sample_flags.caption_sampling(args)
        files = cli.image_files(args.image, "--image")
        pictures = cli.read_images(files, "--image")
        if args.out and os.path.isdir(args.out):
            raise cli.UsageError(f"--out={args.out}: is a directory (a .jsonl file is written)")
        run = runs.load_run(args.checkpoint, args.step, args.vq, args.weights)
        captions = []
        batches = range(0, len(pictures), args.batch_size)
        for start in tqdm(batches, desc="caption", unit="batch", disable=len(batches) < 2):
            captions += images_lib.caption_images(
                run, pictures[start : start + args.batch_size], scfg, args.max_tokens,
                args.seed, args.batch_size, lang=args.lang, first=start,
            )  # fmt: skip
    for path, text in zip(files, captions, strict=True):
        print(f"{path}\t{text}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for path, text in zip(files, captions, strict=True):
                f.write(json.dumps({"image": path, "caption": text}, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
