"""Raw image-caption sources for ``prepare``: a folder, a jsonl or csv file, or a TFDS dataset.

Every source yields ``SourceExample``s in a deterministic order (the order decides which
shard an example lands in, which is what makes a resumed run free of duplicates). A row that
cannot be used (bad JSON, no image field) is yielded with ``error`` set, so ``prepare``
skips, counts and lists it instead of stopping.

- folder: every image file below the folder (sorted by path); the caption is the sidecar
  ``<name>.txt`` ("" if absent); key = path relative to the folder.
- jsonl / csv: one row per example, fields ``image`` (or ``path`` / ``file_name``; relative
  to the file's folder), ``caption`` (or ``text``), optional ``lang``, ``refined_caption``,
  ``key`` (default: the line number).
- ``tfds:NAME[:SPLIT]``: ``tfds.data_source`` (no TensorFlow); ``image_key`` and
  ``caption_key`` (``a/b`` for nested features; a list of captions takes the first) name the
  features.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_IMAGE_FIELDS = ("image", "path", "file_name", "filename")
_CAPTION_FIELDS = ("caption", "text")


@dataclasses.dataclass
class SourceExample:
    key: str
    image: str | bytes | np.ndarray | None  # file path, encoded bytes or uint8 [H, W, C]
    caption: str = ""
    lang: str = ""
    refined_caption: str = ""
    error: str = ""  # set when the row itself is unusable
    line: int = 0  # jsonl line / csv row number (0: not from a text file)


def _first(row: dict, names: tuple[str, ...]) -> Any:
    for n in names:
        if row.get(n) not in (None, ""):
            return row[n]
    return None


def _from_row(row: dict, base_dir: str, default_key: str, where: str) -> SourceExample:
    key = str(row.get("key") or default_key)
    image = _first(row, _IMAGE_FIELDS)
    if image is None:
        return SourceExample(
            key, None, error=f"{where}: no image field ({'/'.join(_IMAGE_FIELDS)})"
        )
    caption = _first(row, _CAPTION_FIELDS)
    return SourceExample(
        key=key,
        image=os.path.join(base_dir, str(image)),
        caption=str(caption or ""),
        lang=str(row.get("lang") or ""),
        refined_caption=str(row.get("refined_caption") or ""),
    )


def iter_folder(folder: str) -> Iterator[SourceExample]:
    paths = []
    for root, _, files in os.walk(folder):
        paths += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    for path in sorted(paths):
        txt = os.path.splitext(path)[0] + ".txt"
        caption = ""
        if os.path.exists(txt):
            with open(txt, encoding="utf-8", errors="replace") as f:
                caption = f.read().strip()
        yield SourceExample(os.path.relpath(path, folder), path, caption)


def _unencodable(row: dict) -> str:
    """The first string field that cannot be UTF-8 encoded (a lone surrogate such as
    ``"\\udcff"`` in the JSON), as a message; "" when all can."""
    for key, value in row.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"field {key!r} is not valid Unicode ({e.reason} at {e.start})"
    return ""


def iter_jsonl(path: str) -> Iterator[SourceExample]:
    """One example per line. A line that is not UTF-8, not a JSON object, holds a string
    that cannot be encoded, or has no image field is yielded with ``error`` set (skipped,
    counted and listed by ``prepare``), never ending the run."""
    base = os.path.dirname(os.path.abspath(path))
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path} line {line_no}"
            key = f"line-{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                error = f"{where}: not UTF-8 ({e.reason} at byte {e.start})"
                yield SourceExample(key, None, error=error, line=line_no)
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                yield SourceExample(key, None, error=f"{where}: bad JSON ({e})", line=line_no)
                continue
            bad = _unencodable(row)
            if bad:
                yield SourceExample(key, None, error=f"{where}: {bad}", line=line_no)
                continue
            yield dataclasses.replace(_from_row(row, base, key, where), line=line_no)


def iter_csv(path: str) -> Iterator[SourceExample]:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8", newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f), 1):
            ex = _from_row(row, base, f"row-{row_no}", f"{path} row {row_no}")
            yield dataclasses.replace(ex, line=row_no)


def _feature(example: dict, key: str) -> Any:
    value: Any = example
    for part in key.split("/"):
        value = value[part]
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    if isinstance(value, np.ndarray) and value.dtype.kind in "SUO":
        value = value.reshape(-1)[0] if value.size else ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value


def iter_tfds(
    spec: str, data_dir: str | None, image_key: str, caption_key: str
) -> Iterator[SourceExample]:
    import tensorflow_datasets as tfds

    parts = spec.split(":")
    name, split = parts[1], (parts[2] if len(parts) > 2 else "train")
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    for i in range(len(source)):
        key = f"{name}/{split}/{i}"
        try:
            ex = source[i]
            image = np.asarray(ex[image_key])
            caption = str(_feature(ex, caption_key)) if caption_key else ""
        except Exception as e:  # a bad TFDS example must not stop the run
            yield SourceExample(key, None, error=f"tfds {name}:{split} index {i}: {e}")
            continue
        yield SourceExample(key, image, caption)


def iter_source(
    spec: str,
    tfds_data_dir: str | None = None,
    tfds_image_key: str = "image",
    tfds_caption_key: str = "caption",
) -> Iterator[SourceExample]:
    """Examples of ``spec`` (folder, ``*.jsonl``, ``*.csv`` or ``tfds:NAME[:SPLIT]``), in order."""
    if spec.startswith("tfds:"):
        return iter_tfds(spec, tfds_data_dir, tfds_image_key, tfds_caption_key)
    if os.path.isdir(spec):
        return iter_folder(spec)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"--source={spec!r}: no such folder or file")
    if spec.endswith(".jsonl"):
        return iter_jsonl(spec)
    if spec.endswith(".csv"):
        return iter_csv(spec)
    raise ValueError(f"--source={spec!r}: expected a folder, *.jsonl, *.csv or tfds:NAME[:SPLIT]")
