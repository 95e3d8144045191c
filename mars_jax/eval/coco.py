"""MS-COCO caption sampling and resumable image generation into shards.

``draw_captions``: from ``annotations/captions_val2014.json``, ``num`` distinct images are
drawn with a fixed seed (a permutation of the sorted image ids) and one of each image's
captions is drawn with the same generator: the usual FID-30K protocol (30,000 captions,
one per image, generated images vs the val2014 images).

``generate_shards``: rows are generated in fixed shards (``<out>/images/shard_00000.npz``
holds rows ``[0, shard_size)``, uint8 ``images`` and their ``index``); a shard is written to
a temporary file and renamed, so a killed run leaves only whole shards, and a rerun skips
them. Shard ``k`` is sampled with seed ``seed + k * shard_size`` whatever was done before,
so a resumed run makes the same images as an uninterrupted one. ``plan.json`` in ``out``
records the captions and settings; a rerun with different ones is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mars_jax.eval import fid_stats

PLAN_FILE = "plan.json"
IMAGES_DIR = "images"

# (captions, seed) -> uint8 [len(captions), H, W, 3]
ImageProducer = Callable[[Sequence[str], int], np.ndarray]


def read_coco_annotations(path: str) -> dict[int, dict[str, Any]]:
    """image id → {"file_name", "captions": [...]} from a COCO captions json."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{path}: not a COCO captions file (no 'annotations')")
    images = {
        int(im["id"]): {"file_name": im.get("file_name", ""), "captions": []}
        for im in data.get("images", [])
    }
    for ann in data["annotations"]:
        entry = images.setdefault(int(ann["image_id"]), {"file_name": "", "captions": []})
        entry["captions"].append(" ".join(str(ann["caption"]).split()))
    return {k: v for k, v in images.items() if v["captions"]}


def draw_captions(path: str, num: int, seed: int) -> list[dict[str, Any]]:
    """``num`` rows ``{"index", "image_id", "file_name", "caption"}``, one per distinct image."""
    images = read_coco_annotations(path)
    if num > len(images):
        raise ValueError(f"--num={num}: {path} has only {len(images)} captioned images")
    rng = np.random.default_rng(seed)
    ids = sorted(images)
    chosen = [ids[i] for i in rng.permutation(len(ids))[:num]]
    rows = []
    for i, image_id in enumerate(chosen):
        caps = sorted(images[image_id]["captions"])
        rows.append(
            {
                "index": i,
                "image_id": image_id,
                "file_name": images[image_id]["file_name"],
                "caption": caps[int(rng.integers(len(caps)))],
            }
        )
    return rows


def read_caption_jsonl(path: str) -> list[dict[str, str]]:
    """``{"image": <file in --images>, "caption": ...}`` per line (``file_name`` also read)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            image = row.get("image") or row.get("file_name") or row.get("file")
            if not image or "caption" not in row:
                raise ValueError(f"{path}:{n}: need 'image' and 'caption' keys, got {sorted(row)}")
            rows.append({"image": image, "caption": row["caption"]})
    if not rows:
        raise ValueError(f"{path}: no captions")
    return rows


def check_plan(out_dir: str, plan: dict[str, Any]) -> None:
    """Write ``plan.json``, or check that an existing one (a run to resume) matches."""
    path = os.path.join(out_dir, PLAN_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old != json.loads(json.dumps(plan)):
            changed = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            raise ValueError(
                f"{out_dir} holds a run with other settings ({', '.join(changed)}); "
                "use a new --out or delete it"
            )
        return
    os.makedirs(out_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(plan, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)


def shard_path(out_dir: str, k: int) -> str:
    return os.path.join(out_dir, IMAGES_DIR, f"{fid_stats.SHARD_PREFIX}{k:05d}.npz")


def shard_done(path: str, expected: int) -> bool:
    if not os.path.exists(path):
        return False
    try:
        with np.load(path) as f:
            return len(f["index"]) == expected and len(f["images"]) == expected
    except Exception:  # a damaged file is regenerated
        return False


def pending_shards(out_dir: str, num: int, shard_size: int) -> list[int]:
    starts = range(0, num, shard_size)
    return [
        k
        for k, s in enumerate(starts)
        if not shard_done(shard_path(out_dir, k), min(shard_size, num - s))
    ]


def generate_shards(
    captions: Sequence[str],
    produce: ImageProducer,
    out_dir: str,
    seed: int,
    shard_size: int,
    progress: bool = True,
) -> int:
    """Generate every missing shard (see the module docstring); returns how many it made."""
    from tqdm import tqdm

    num = len(captions)
    todo = pending_shards(out_dir, num, shard_size)
    os.makedirs(os.path.join(out_dir, IMAGES_DIR), exist_ok=True)
    done = num - sum(min(shard_size, num - k * shard_size) for k in todo)
    with tqdm(total=num, initial=done, desc="generate", unit="img", disable=not progress) as bar:
        for k in todo:
            start = k * shard_size
            chunk = list(captions[start : start + shard_size])
            images = np.asarray(produce(chunk, seed + start))
            if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(chunk):
                raise ValueError(
                    f"image producer returned {images.dtype} {images.shape}; expected uint8 "
                    f"[{len(chunk)}, H, W, 3]"
                )
            path = shard_path(out_dir, k)
            tmp = path + ".partial"  # not a shard name: a kill mid-write leaves no shard
            with open(tmp, "wb") as f:
                np.savez(f, images=images, index=np.arange(start, start + len(chunk)))
            os.replace(tmp, path)
            bar.update(len(chunk))
    return len(todo)


def iter_shards(out_dir: str):
    """(row indices, uint8 images) of each generated shard, in row order."""
    for path in fid_stats.list_shards(os.path.join(out_dir, IMAGES_DIR)):
        with np.load(path) as f:
            yield f["index"], f["images"]


def read_shard_images(out_dir: str) -> np.ndarray:
    """All generated images in row order (small runs; the bench streams ``iter_shards``)."""
    return np.concatenate([images for _, images in iter_shards(out_dir)])
