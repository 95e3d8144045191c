"""The standard-network benches of ``python -m mars_jax.evaluate`` (flags, checks, runs).

    --bench=fid --images=a/ --reference=b/|stats.npz --inception=pt_inception.pth|.npz
        [--save_stats=a.npz]   (or --extractor=palette|module:attr instead of --inception)
    --bench=clipscore --images=a/ --captions=c.jsonl --clip=<HF CLIP folder>
    --bench=coco --checkpoint=<run> --captions=annotations/captions_val2014.json
        --reference=val2014/|stats.npz --inception=... --clip=... --num=30000 --out=eval/

``coco``: ``--num`` captions drawn with ``--caption_seed`` (one per image), images generated
with the run's sampler in resumable shards under ``--out`` (``mars_jax.eval.coco``), then
FID (FID Inception pool3 vs ``--reference``) and CLIP score (generated image vs its
caption), and ``<out>/report.json`` with every setting, the networks and their weight
sha256. Reference statistics of a folder are cached in ``<out>/reference_stats.npz``.

Every flag and file is checked before a model is loaded or a file written; a problem is
one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mars_jax import digests
from mars_jax.eval import clip, coco, features, fid, fid_stats, inception, weights

REPORT_FILE = "report.json"
RUN_FILE = "run.json"  # the sampler's step and settings, written when generation starts


class UsageError(ValueError):
    """A bad flag or a missing file, found before anything is loaded."""


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", default=None, help="fid/clipscore: folder of images (or shards)")
    p.add_argument("--reference", default=None, help="fid/coco: image folder or stats .npz")
    p.add_argument("--inception", default=None, help="pt_inception-2015-12-05 .pth/.npz")
    p.add_argument("--clip", default=None, help="Hugging Face CLIP folder or OpenAI ViT-*.pt")
    p.add_argument("--captions", default=None, help="clipscore: .jsonl; coco: captions json")
    p.add_argument("--num", type=int, default=30000, help="coco: number of captions/images")
    p.add_argument("--caption_seed", type=int, default=0, help="coco: caption draw seed")
    p.add_argument("--shard_size", type=int, default=250, help="coco: images per shard")
    p.add_argument("--resolution", default=None, help="coco: WIDTHxHEIGHT (default: run's)")
    p.add_argument("--save_stats", default=None, help="fid: write the --images stats .npz")
    p.add_argument("--feature_batch", type=int, default=50, help="Inception/CLIP batch size")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise UsageError(message)


def _torch_needed(flag: str, path: str) -> None:
    if path.endswith((".pth", ".pt", ".bin")) and importlib.util.find_spec("torch") is None:
        raise UsageError(
            f"--{flag}={path}: reading PyTorch weights needs torch; install it, or convert "
            "them once elsewhere with python -m mars_jax.eval.convert_weights"
        )


def _check_weights(args: argparse.Namespace, inception: bool, clip: bool) -> None:
    if inception:
        _need(args.inception, "--inception=<pt_inception-2015-12-05-*.pth or converted .npz> is required")  # fmt: skip
        _need(os.path.isfile(args.inception), f"--inception={args.inception}: no such file")
        _need(
            args.inception.endswith((".pth", ".pt", ".npz", ".safetensors")),
            f"--inception={args.inception}: expected a .pth, .npz or .safetensors file",
        )
        _torch_needed("inception", args.inception)
    if clip:
        _need(args.clip, "--clip=<Hugging Face CLIP folder or OpenAI ViT-*.pt> is required")
        if os.path.isfile(args.clip):
            bpe = os.path.join(os.path.dirname(args.clip), "bpe_simple_vocab_16e6.txt.gz")
            _need(os.path.isfile(bpe), f"--clip={args.clip}: no {bpe} beside it")
            _torch_needed("clip", args.clip)
            return
        _need(os.path.isdir(args.clip), f"--clip={args.clip}: no such folder")
        for name in ("config.json", "vocab.json", "merges.txt"):
            _need(os.path.isfile(os.path.join(args.clip, name)), f"--clip={args.clip}: no {name}")
        weights = ("model.safetensors", "model.npz", "pytorch_model.bin")
        found = [w for w in weights if os.path.isfile(os.path.join(args.clip, w))]
        _need(found, f"--clip={args.clip}: no {', '.join(weights)}")
        _torch_needed("clip", os.path.join(args.clip, found[0]))


def _check_source(flag: str, path: str | None) -> None:
    _need(path, f"--{flag}=<image folder or stats .npz> is required")
    if path.endswith(".npz") and os.path.isfile(path):
        return
    _need(os.path.isdir(path), f"--{flag}={path}: no such folder or .npz file")
    _need(
        fid_stats.list_shards(path) or fid_stats.list_images(path),
        f"--{flag}={path}: no images ({', '.join(fid_stats.IMAGE_EXTENSIONS)}) or shards",
    )


def validate(args: argparse.Namespace) -> None:
    """Every check that needs no model (raises ``UsageError``)."""
    if args.bench == "fid":
        _check_source("images", args.images)
        _need(not args.images.endswith(".npz"), "--images must be a folder (stats go in --reference)")  # fmt: skip
        _check_source("reference", args.reference)
        if args.extractor is None and args.inception is None:
            raise UsageError(
                "--bench=fid --images needs --inception=<pt_inception .pth/.npz> "
                "(or --extractor=palette|module:attr for demo features)"
            )
        _need(not (args.extractor and args.inception), "--inception and --extractor: pick one")
        if args.inception:
            _check_weights(args, inception=True, clip=False)
        if args.save_stats:
            _need(args.save_stats.endswith(".npz"), "--save_stats must end in .npz")
    elif args.bench == "clipscore":
        _check_source("images", args.images)
        _need(args.captions, "--captions=<jsonl of {image, caption}> is required")
        _need(os.path.isfile(args.captions), f"--captions={args.captions}: no such file")
        _check_weights(args, inception=False, clip=True)
    elif args.bench == "coco":
        _need(args.checkpoint, "--checkpoint=<training run or bundle> is required")
        _need(args.captions, "--captions=<annotations/captions_val2014.json> is required")
        _need(os.path.isfile(args.captions), f"--captions={args.captions}: no such file")
        _check_source("reference", args.reference)
        _need(args.out, "--out=<folder for shards and the report> is required")
        _need(args.num >= 2, f"--num={args.num}: need at least 2 images for FID")
        _need(args.shard_size >= 1, f"--shard_size={args.shard_size}: must be >= 1")
        _check_weights(args, inception=True, clip=True)
    _need(args.feature_batch >= 1, f"--feature_batch={args.feature_batch}: must be >= 1")


def _clip_weights_file(folder: str) -> str:
    if os.path.isfile(folder):
        return folder
    for name in ("model.safetensors", "model.npz", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(folder)


def load_inception(path: str, batch_size: int):

    info = {"name": "pytorch-fid FID Inception-v3 pool3 (2048-d)", "weights": path}
    info["sha256"] = digests.file_sha256(path)
    return inception.InceptionFeatures(inception.load_params(path), batch_size), info


def load_clip(folder: str, batch_size: int):

    model = clip.load_clip(folder, batch_size)
    weights = _clip_weights_file(folder)
    c = model.cfg
    info = {
        "name": model.name,
        "folder": folder,
        "weights": weights,
        "sha256": digests.file_sha256(weights),
        "shape": f"ViT patch {c.patch_size}, {c.image_size}px, width {c.vision.width}, "
        f"{c.vision.layers} layers; text width {c.text.width}; embed {c.embed_dim}",
    }
    return model, info


def _progress(args) -> bool:
    return not args.no_progress


def _reference_stats(args, extractor, out_dir: str | None, net_info: dict):
    """Reference (mu, sigma): an .npz as is; a folder's cached in ``out_dir`` if given."""
    if args.reference.endswith(".npz") and os.path.isfile(args.reference):
        return fid_stats.load_stats(args.reference), {"stats": args.reference}
    meta = {
        "folder": os.path.abspath(args.reference),
        "num_images": fid_stats.count_images(args.reference),
        "network_sha256": net_info.get("sha256", net_info.get("name")),
    }
    cache = os.path.join(out_dir, "reference_stats.npz") if out_dir else None
    if cache and os.path.exists(cache) and os.path.exists(cache + ".json"):
        with open(cache + ".json") as f:
            if json.load(f) == meta:
                return fid_stats.load_stats(cache), {**meta, "cached_stats": cache}
    stats = fid_stats.stats_of(args.reference, extractor.image_features, "reference", _progress(args))  # fmt: skip
    if cache:
        fid_stats.save_stats(cache, *stats)
        with open(cache + ".json", "w") as f:
            json.dump(meta, f, indent=1)
    return stats, meta


def run_fid(args, log: Callable[[str], None] = print) -> dict[str, Any]:
    if args.inception:
        extractor, info = load_inception(args.inception, args.feature_batch)
    else:
        extractor = features.load_extractor(args.extractor)
        info = {"name": args.extractor}
    mu1, s1 = fid_stats.stats_of(args.images, extractor.image_features, "images", _progress(args))
    if args.save_stats:
        fid_stats.save_stats(args.save_stats, mu1, s1)
    (mu2, s2), _ = _reference_stats(args, extractor, None, info)
    value = fid_stats.frechet_distance(mu1, s1, mu2, s2)
    log(f"network: {info['name']}")
    log(f"fid={value:.4f}")
    return {"fid": value, "network": info}


def clip_score_of(model, image_chunks, captions: Sequence[str], progress: bool) -> float:
    """CLIP score of images (an iterable of chunks, in caption order) and their captions."""
    from tqdm import tqdm

    feats = []
    with tqdm(total=len(captions), desc="clip", unit="img", disable=not progress) as bar:
        for chunk in image_chunks:
            feats.append(model.image_features(list(chunk)))
            bar.update(len(chunk))
    img = np.concatenate(feats)
    if len(img) != len(captions):
        raise ValueError(f"{len(img)} images for {len(captions)} captions")
    return fid.clip_score(img, model.text_features(list(captions)))


def run_clipscore(args, log: Callable[[str], None] = print) -> dict[str, Any]:
    try:
        rows = coco.read_caption_jsonl(args.captions)
    except (ValueError, json.JSONDecodeError) as e:
        raise UsageError(str(e)) from None
    for r in rows:
        path = os.path.join(args.images, r["image"])
        if not os.path.isfile(path):
            raise UsageError(f"--captions={args.captions}: image {r['image']} not in {args.images}")
    model, info = load_clip(args.clip, args.feature_batch)
    files = [os.path.join(args.images, r["image"]) for r in rows]
    chunks = (
        [fid_stats.read_image(p) for p in files[i : i + 64]] for i in range(0, len(files), 64)
    )
    score = clip_score_of(model, chunks, [r["caption"] for r in rows], _progress(args))
    log(f"network: {info['name']}")
    log(f"clip_score={score:.4f}")
    return {"clip_score": score, "network": info}


def check_networks(args) -> None:
    """Read and check the weight files on the host (no device memory) before a long
    generation stage; a bad file is a ``UsageError`` naming the tensor."""

    try:
        inception.params_from_state_dict(weights.load_state_dict_file(args.inception), False)
    except (KeyError, ValueError, OSError) as e:
        raise UsageError(f"--inception={args.inception}: {_message(e)}") from None
    try:
        clip.load_clip(args.clip, to_device=False)
    except (KeyError, ValueError, OSError) as e:
        raise UsageError(f"--clip={args.clip}: {_message(e)}") from None


def _message(e: Exception) -> str:
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


# () -> (producer, run info for the report); the entry point builds it on the run's sampler.
ProducerFactory = Callable[[], tuple[coco.ImageProducer, dict[str, Any]]]


def run_coco(
    args,
    scfg_kwargs: dict[str, Any],
    make_producer: ProducerFactory,
    log: Callable[[str], None] = print,
) -> dict:
    """The ``coco`` bench (module docstring); ``make_producer`` is called only when images
    are missing, so a finished generation stage loads no model."""
    t0 = time.time()
    try:
        rows = coco.draw_captions(args.captions, args.num, args.caption_seed)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise UsageError(f"--captions={args.captions}: {e}") from None
    captions = [r["caption"] for r in rows]
    plan = {
        "checkpoint": os.path.abspath(args.checkpoint),
        "captions_file": os.path.abspath(args.captions),
        "num": args.num,
        "caption_seed": args.caption_seed,
        "sampling_seed": args.seed,
        "shard_size": args.shard_size,
        "sampling": scfg_kwargs,
        "resolution": args.resolution,
        "rows": rows,
    }
    todo = coco.pending_shards(args.out, args.num, args.shard_size)
    if todo:  # a bad weights file is found before hours of generation, not after
        check_networks(args)
    try:
        coco.check_plan(args.out, plan)
    except ValueError as e:
        raise UsageError(str(e)) from None
    run_info: dict[str, Any] = {}
    if todo:
        log(f"generating {len(todo)} of {-(-args.num // args.shard_size)} shards into {args.out}")
        produce, run_info = make_producer()
        with open(os.path.join(args.out, RUN_FILE), "w") as f:
            json.dump(run_info, f, indent=1)
        coco.generate_shards(
            captions, produce, args.out, args.seed, args.shard_size, _progress(args)
        )
    else:
        log(f"all {args.num} images already in {args.out}; scoring")
    if not run_info and os.path.exists(os.path.join(args.out, RUN_FILE)):
        with open(os.path.join(args.out, RUN_FILE)) as f:
            run_info = json.load(f)
    t_gen = time.time() - t0
    images_dir = os.path.join(args.out, coco.IMAGES_DIR)
    inception_model, inception_info = load_inception(args.inception, args.feature_batch)
    mu1, s1 = fid_stats.stats_of(images_dir, inception_model.image_features, "inception", _progress(args))  # fmt: skip
    fid_stats.save_stats(os.path.join(args.out, "generated_stats.npz"), mu1, s1)
    (mu2, s2), ref_info = _reference_stats(args, inception_model, args.out, inception_info)
    fid_value = fid_stats.frechet_distance(mu1, s1, mu2, s2)
    clip_model, clip_info = load_clip(args.clip, args.feature_batch)
    chunks = (images for _, images in coco.iter_shards(args.out))
    score = clip_score_of(clip_model, chunks, captions, _progress(args))
    _, first = next(coco.iter_shards(args.out))
    report = {
        "fid": fid_value,
        "clip_score": score,
        "num_images": args.num,
        "image_size_hw": list(first.shape[1:3]),
        "settings": {k: v for k, v in plan.items() if k != "rows"},
        "run": run_info,
        "reference": {"source": os.path.abspath(args.reference), **ref_info},
        "networks": {"inception": inception_info, "clip": clip_info},
        "protocol": {
            "fid": "pytorch-fid: bilinear resize to 299 (align_corners=False), [-1, 1], "
            "FID Inception pool3; Frechet distance of (mu, sigma), np.cov",
            "clip_score": "100 * mean(max(cos(image, caption), 0)), CLIP bicubic "
            "shortest-side resize + center crop",
        },
        "seconds": {"generation": round(t_gen, 1), "total": round(time.time() - t0, 1)},
    }
    path = os.path.join(args.out, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False, indent=1)
    log(f"report: {path}")
    log(f"fid={fid_value:.4f} clip_score={score:.4f}")
    return report
