"""``python -m mars_jax.data.prepare``: images + captions → tokenized ArrayRecord shards.

    python -m mars_jax.data.prepare --stage=1 --source=captions.jsonl --out=data/s1 --vq=vq/

Input example ``i`` belongs to shard ``i // shard_size`` (the source order is deterministic).
A shard is finished when ``done/shard-NNNNN.json`` exists; its record files are written under
temporary names and renamed before that marker, so a crashed run restarted with the same
command redoes only unfinished shards and never duplicates a record. With
``--num_workers=N --worker_index=k`` several machines split the shards (``s % N == k``).
When every shard is done, ``manifest.json`` (what the Grain pipeline reads) and
``skipped.jsonl`` (every unreadable or unusable input, with the reason) are written: by the
worker that finds all shards done, or by a final step (a job array's last task)::

    python -m mars_jax.data.prepare --finalize --out=data/s1

which reads only ``--out`` (settings from ``prepare_config.json``, the shard count from
``done/source.json``), writes the manifest, and fails naming the shards not done yet.
Job templates: ``launch/prepare_slurm.sh`` (SLURM job array) and ``launch/prepare_k8s.sh``
(Kubernetes Indexed Job).

Layout of ``--out``::

    prepare_config.json          settings; a rerun with other settings is refused
    done/source.json             the source's shard count (written by every worker)
    <bucket>/shard-NNNNN.array_record   records (records.py) of one code grid
    done/shard-NNNNN.json        per-shard counts, filters, skipped inputs, files
    manifest.json, skipped.jsonl

Buckets are named by code grid: ``16x16`` (stage I/II), ``16x24-64x96`` (stage III: low-res
then high-res grid). Stage II/III captions start with the output resolution as text
(``formats.resolution_prompt``: ``"<width>x<height> <caption>"``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import itertools
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from mars_jax import cli, digests
from mars_jax.data import image_ops, records, sources
from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.tokens import formats, vocab
from mars_jax.vq import images as vq_images
from mars_jax.vq.checkpoint import load_vq, vq_identity

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SKIPPED = "skipped.jsonl"
CONFIG = "prepare_config.json"
_MANIFEST_SKIPPED_LIMIT = 1000  # the manifest lists this many skipped inputs; skipped.jsonl all


@dataclasses.dataclass
class PrepareOptions:
    stage: int
    source: str
    out: str
    vq: str
    tokenizer: str | None = None
    batch_size: int = 32
    shard_size: int = 1024
    min_side: int = 256
    max_aspect: float = 2.0
    image_size: int = 256  # stage I: centre-crop side
    short_side: int = 256  # stage II / III low-res: short side
    bucket_multiple: int = 0  # stage II / III: long side rounded to this (0: 4 × VQ factor)
    hires_long_side: int = 1024  # stage III: high-res long side
    min_long_side: int = -1  # stage III: skip sources smaller than this (-1: hires_long_side)
    num_threads: int = 4
    num_workers: int = 1
    worker_index: int = 0
    tfds_data_dir: str | None = None
    tfds_image_key: str = "image"
    tfds_caption_key: str = "caption"
    progress: bool = True


# --------------------------------------------------------------------------- files


def _atomic_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


def _done_path(out: str, shard: int) -> str:
    return os.path.join(out, "done", f"shard-{shard:05d}.json")


SOURCE_INFO = os.path.join("done", "source.json")


def bucket_name(grid: tuple[int, int], lo_grid: tuple[int, int] | None = None) -> str:
    g = f"{grid[0]}x{grid[1]}"
    return f"{lo_grid[0]}x{lo_grid[1]}-{g}" if lo_grid else g


def write_shard_outputs(out: str, shard: int, buckets: dict[str, dict], stats: dict) -> None:
    """Write one finished shard: its record files (renamed into place), then its marker.

    ``buckets[name]`` holds ``grid``, ``lo_grid``, ``image_hw``, ``lo_image_hw`` and
    ``records`` (serialised, in input order); ``stats`` the shard's counts and skipped list.
    """
    files = {}
    for name, b in sorted(buckets.items()):
        rel = os.path.join(name, f"shard-{shard:05d}.array_record")
        os.makedirs(os.path.join(out, name), exist_ok=True)
        tmp = os.path.join(out, name, f".tmp-shard-{shard:05d}.array_record")
        records.write_shard(tmp, b["records"])
        os.replace(tmp, os.path.join(out, rel))
        files[name] = {k: b[k] for k in ("grid", "lo_grid", "image_hw", "lo_image_hw")}
        files[name].update(file=rel, count=len(b["records"]))
    _atomic_json(_done_path(out, shard), dict(stats, shard=shard, buckets=files))


def finalize(out: str, num_shards: int, header: dict) -> dict | None:
    """Aggregate the shard markers into ``manifest.json`` + ``skipped.jsonl`` once all are done."""
    markers = [_done_path(out, s) for s in range(num_shards)]
    missing = [s for s, m in enumerate(markers) if not os.path.exists(m)]
    if missing:
        log.info("%d of %d shards not done yet (e.g. %s)", len(missing), num_shards, missing[:5])
        return None
    counts: collections.Counter = collections.Counter()
    filters: collections.Counter = collections.Counter()
    hist = {"text": collections.Counter(), "refined_text": collections.Counter()}
    buckets: dict[str, dict] = {}
    skipped: list[dict] = []
    for m in markers:
        with open(m, encoding="utf-8") as f:
            done = json.load(f)
        counts.update(done["counts"])
        filters.update(done["filters"])
        for field in hist:
            hist[field].update({int(k): v for k, v in done["text_len_histogram"][field].items()})
        skipped += done["skipped"]
        for name, b in done["buckets"].items():
            agg = buckets.setdefault(
                name, {k: b[k] for k in ("grid", "lo_grid", "image_hw", "lo_image_hw")}
            )
            agg.setdefault("files", []).append(b["file"])
            agg.setdefault("file_counts", []).append(b["count"])
            agg["count"] = agg.get("count", 0) + b["count"]
    with open(os.path.join(out, SKIPPED), "w", encoding="utf-8") as f:
        for s in skipped:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    manifest = dict(
        header,
        schema_version=records.SCHEMA_VERSION,
        num_shards=num_shards,
        counts=dict(counts),
        filters=dict(filters),
        buckets=buckets,
        text_len_histogram={k: {str(n): c for n, c in sorted(v.items())} for k, v in hist.items()},
        skipped=skipped[:_MANIFEST_SKIPPED_LIMIT],
        num_skipped=len(skipped),
    )
    _atomic_json(os.path.join(out, MANIFEST), manifest)
    return manifest


# --------------------------------------------------------------------------- per example


@dataclasses.dataclass
class _Prepared:
    """One usable input after crop/resize, before VQ encoding."""

    example: sources.SourceExample
    orig_hw: tuple[int, int]
    pixels: np.ndarray | None  # uint8 [H, W, 3]; dropped once encoded
    lo_pixels: np.ndarray | None = None

    def __post_init__(self):
        self.image_hw = tuple(self.pixels.shape[:2])
        self.lo_image_hw = tuple(self.lo_pixels.shape[:2]) if self.lo_pixels is not None else None


class _ShardWorker:
    def __init__(self, opts: PrepareOptions, vq_cfg, vq_params, tokenizer):
        self.opts, self.vq_cfg, self.vq_params, self.tok = opts, vq_cfg, vq_params, tokenizer
        self.f = vq_cfg.downsample_factor
        self.multiple = opts.bucket_multiple or 4 * self.f
        self.min_long = opts.hires_long_side if opts.min_long_side < 0 else opts.min_long_side
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, opts.num_threads))

    def load(self, ex: sources.SourceExample) -> _Prepared | tuple[str, str]:
        """Decode, filter and resize one input; ``(reason, message)`` when it is not kept."""
        if ex.error:
            return "bad_row", ex.error
        where = f"{ex.key}" + (f" ({ex.image})" if isinstance(ex.image, str) else "")
        try:
            img = image_ops.load_rgb(ex.image, where)
        except image_ops.ImageError as e:
            return "unreadable", str(e)
        o = self.opts
        h, w = img.height, img.width
        min_long = self.min_long if o.stage == 3 else 0
        reason = image_ops.filter_reason(h, w, o.min_side, o.max_aspect, min_long)
        if reason:
            return reason, ""
        if o.stage == 1:
            return _Prepared(ex, (h, w), image_ops.resize_cover_crop(img, (o.image_size,) * 2))
        lo_hw = image_ops.bucket_size(h, w, o.short_side, self.multiple, o.max_aspect)
        if o.stage == 2:
            return _Prepared(ex, (h, w), image_ops.resize_cover_crop(img, lo_hw))
        hi_hw = image_ops.hires_size(lo_hw, o.hires_long_side, self.f)
        return _Prepared(
            ex,
            (h, w),
            image_ops.resize_cover_crop(img, hi_hw),
            image_ops.resize_cover_crop(img, lo_hw),
        )

    def encode(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        """Batched VQ encode (one jit per image size; the last batch is padded)."""

        out = []
        bs = self.opts.batch_size
        for i in range(0, len(pixels), bs):
            chunk = np.stack(pixels[i : i + bs])
            n = len(chunk)
            if n < bs:
                chunk = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), chunk.dtype)])
            codes = np.asarray(vq_images.encode_uint8(self.vq_params, self.vq_cfg, chunk))
            out += list(codes[:n])
        return out

    def _texts(self, ex: sources.SourceExample, hw: tuple[int, int]) -> tuple[str, str]:
        if self.opts.stage == 1:
            return ex.caption, ex.refined_caption
        refined = ex.refined_caption
        return (
            formats.resolution_prompt(hw[1], hw[0], ex.caption),
            formats.resolution_prompt(hw[1], hw[0], refined) if refined else "",
        )

    def process(self, shard: int, examples: list[sources.SourceExample], bar) -> None:
        filters: collections.Counter = collections.Counter()
        skipped: list[dict] = []
        kept: list[_Prepared] = []
        # Encode per image size (one static shape per VQ batch) as soon as a batch is full,
        # and decode images a window at a time, so memory stays bounded by a few batches.
        pending: dict[tuple, list[int]] = collections.defaultdict(list)
        codes: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

        def flush(size_key: tuple) -> None:
            idx = pending.pop(size_key)
            hi = self.encode([kept[i].pixels for i in idx])
            lo = [None] * len(idx)
            if size_key[1] is not None:
                lo = self.encode([kept[i].lo_pixels for i in idx])
            for i, h, lo_c in zip(idx, hi, lo, strict=True):
                codes[i] = (h, lo_c)
                kept[i].pixels = kept[i].lo_pixels = None

        window = 4 * self.opts.batch_size
        for start in range(0, len(examples), window):
            part = examples[start : start + window]
            for ex, res in zip(part, self.pool.map(self.load, part), strict=True):
                if bar is not None:
                    bar.update(1)
                if isinstance(res, _Prepared):
                    kept.append(res)
                    size_key = (res.image_hw, res.lo_image_hw)
                    pending[size_key].append(len(kept) - 1)
                    if len(pending[size_key]) == self.opts.batch_size:
                        flush(size_key)
                    continue
                reason, message = res
                if message:  # unreadable / unusable: listed; filtered by size: only counted
                    entry = {"shard": shard, "key": ex.key, "reason": reason, "error": message}
                    if ex.line:
                        entry["line"] = ex.line
                    skipped.append(entry)
                    log.warning("skipping %s", message)
                filters[reason] += 1
        for size_key in list(pending):
            flush(size_key)
        buckets: dict[str, dict] = {}
        hist = {"text": collections.Counter(), "refined_text": collections.Counter()}
        texts = [self._texts(p.example, p.image_hw) for p in kept]
        ids = self.tok.encode_batch([t for pair in texts for t in pair])
        for i, p in enumerate(kept):
            hi, lo = codes[i]
            text, refined = texts[i]
            text_ids, refined_ids = ids[2 * i], (ids[2 * i + 1] if refined else [])
            hist["text"][len(text_ids)] += 1
            if refined:
                hist["refined_text"][len(refined_ids)] += 1
            rec = {
                "key": p.example.key,
                "caption": p.example.caption,
                "refined_caption": p.example.refined_caption,
                "text": text,
                "refined_text": refined,
                "text_ids": text_ids,
                "refined_ids": refined_ids,
                "lang": p.example.lang,
                "orig_hw": p.orig_hw,
                "image_hw": p.image_hw,
                "codes": hi,
            }
            if lo is not None:
                rec.update(lo_codes=lo, lo_image_hw=p.lo_image_hw)
            name = bucket_name(hi.shape, lo.shape if lo is not None else None)
            b = buckets.setdefault(
                name,
                {
                    "grid": list(hi.shape),
                    "lo_grid": list(lo.shape) if lo is not None else None,
                    "image_hw": list(p.image_hw),
                    "lo_image_hw": list(p.lo_image_hw) if lo is not None else None,
                    "records": [],
                },
            )
            b["records"].append(records.encode_record(rec))
        stats = {
            "counts": {"seen": len(examples), "written": len(kept), "skipped": len(skipped)},
            "filters": dict(filters),
            "skipped": skipped,
            "text_len_histogram": {k: dict(v) for k, v in hist.items()},
        }
        write_shard_outputs(self.opts.out, shard, buckets, stats)


# --------------------------------------------------------------------------- driver


def chunks(it: Iterable, size: int) -> Iterator[list]:
    it = iter(it)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _check_config(out: str, settings: dict) -> None:
    """Refuse a rerun with other settings once a shard is done; before that (a run that
    failed early) the new settings replace the old ones."""
    path = os.path.join(out, CONFIG)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except ValueError:
            old = {}
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff and not glob.glob(os.path.join(out, "done", "shard-*.json")):
            log.info("%s: no shard done yet; replacing the settings of an earlier run", out)
            _atomic_json(path, settings)
        elif diff:
            raise ValueError(
                f"{out} was prepared with other settings; use a new --out or the same "
                f"flags. Differences (was, now): {diff}"
            )
    else:
        _atomic_json(path, settings)


def run(opts: PrepareOptions) -> dict | None:
    """Prepare (or resume) ``opts.out``; returns the manifest once every shard is done."""

    if opts.stage not in (1, 2, 3):
        raise ValueError(f"--stage must be 1, 2 or 3, got {opts.stage}")
    vq_cfg, vq_params = load_vq(opts.vq)
    if vq_cfg.codebook_size > vocab.NUM_IMAGE_CODES:
        raise ValueError(
            f"--vq={opts.vq}: codebook of {vq_cfg.codebook_size} codes exceeds the "
            f"{vocab.NUM_IMAGE_CODES} image ids of the vocabulary"
        )
    f = vq_cfg.downsample_factor
    for flag in ("image_size", "short_side", "hires_long_side"):
        if getattr(opts, flag) % f:
            raise ValueError(f"--{flag}={getattr(opts, flag)} is not a multiple of VQ factor {f}")
    tok = load_tokenizer(opts.tokenizer)
    header = {
        "stage": opts.stage,
        "source": opts.source if opts.source.startswith("tfds:") else os.path.abspath(opts.source),
        "codebook_size": vq_cfg.codebook_size,
        "downsample_factor": f,
        "vq": {"dir": os.path.abspath(opts.vq), "identity": vq_identity(vq_cfg, vq_params)},
        "tokenizer": {
            "vocab_file": os.path.basename(tok.vocab_file),
            "sha256": digests.file_sha256(tok.vocab_file)[:32],
        },
        "sizes": {
            k: getattr(opts, k)
            for k in (
                "image_size",
                "short_side",
                "bucket_multiple",
                "hires_long_side",
                "min_side",
                "max_aspect",
                "min_long_side",
            )
        },
        "shard_size": opts.shard_size,
    }
    source = sources.iter_source(
        opts.source, opts.tfds_data_dir, opts.tfds_image_key, opts.tfds_caption_key
    )  # a missing source fails here, before anything is written
    os.makedirs(opts.out, exist_ok=True)
    _check_config(opts.out, header)
    for tmp in glob.glob(os.path.join(opts.out, "*", ".tmp-*")):
        os.remove(tmp)  # partial files of an interrupted run
    worker = _ShardWorker(opts, vq_cfg, vq_params, tok)
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"prepare stage {opts.stage}", unit="img", file=sys.stderr)
    num_shards = 0
    for shard, examples in enumerate(chunks(source, opts.shard_size)):
        num_shards = shard + 1
        if shard % opts.num_workers != opts.worker_index:
            continue
        if os.path.exists(_done_path(opts.out, shard)):
            if bar is not None:
                bar.update(len(examples))
            continue
        worker.process(shard, examples, bar)
    if bar is not None:
        bar.close()
    worker.pool.shutdown()
    os.makedirs(os.path.join(opts.out, "done"), exist_ok=True)
    _atomic_json(os.path.join(opts.out, SOURCE_INFO), {"num_shards": num_shards})
    manifest = finalize(opts.out, num_shards, header)
    if manifest is not None:
        c = manifest["counts"]
        log.info(
            "%s: %d written of %d seen; filtered %s; %d skipped (see %s)",
            opts.out,
            c.get("written", 0),
            c.get("seen", 0),
            manifest["filters"],
            manifest["num_skipped"],
            SKIPPED,
        )
    return manifest


def finalize_out(out: str) -> dict:
    """The final step of a distributed run: write ``out``'s manifest from its shard markers.

    Raises naming the shards that are not done (or when no worker has finished yet).
    """
    config_path, source_path = os.path.join(out, CONFIG), os.path.join(out, SOURCE_INFO)
    for path in (config_path, source_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"--finalize: {path} does not exist (no worker finished yet)")
    with open(config_path, encoding="utf-8") as f:
        header = json.load(f)
    with open(source_path, encoding="utf-8") as f:
        num_shards = int(json.load(f)["num_shards"])
    manifest = finalize(out, num_shards, header)
    if manifest is None:
        missing = [s for s in range(num_shards) if not os.path.exists(_done_path(out, s))]
        raise RuntimeError(
            f"--finalize: {len(missing)} of {num_shards} shards of {out} are not done: "
            f"{missing[:20]}{' ...' if len(missing) > 20 else ''} (rerun their workers)"
        )
    return manifest


def parse_args(argv: list[str] | None = None) -> PrepareOptions:
    p = cli.parser("data.prepare", __doc__)
    defaults = PrepareOptions(stage=1, source="", out="", vq="")
    p.add_argument("--stage", type=int, required=True, choices=(1, 2, 3))
    p.add_argument("--source", required=True, help="folder | *.jsonl | *.csv | tfds:NAME[:SPLIT]")
    p.add_argument("--out", required=True)
    p.add_argument("--vq", required=True, help="VQ-GAN directory (mars_jax.vq.checkpoint)")
    p.add_argument("--tokenizer", default=None, help="qwen.tiktoken file or its directory")
    for field in dataclasses.fields(PrepareOptions):
        if field.name in ("stage", "source", "out", "vq", "tokenizer", "progress"):
            continue
        value = getattr(defaults, field.name)
        kind = type(value) if value is not None else str
        p.add_argument(f"--{field.name}", type=kind, default=value)
    p.add_argument("--no_progress", action="store_true")
    a = vars(p.parse_args(argv))
    a["progress"] = not a.pop("no_progress")
    return PrepareOptions(**a)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mars_jax").setLevel(logging.INFO)  # this run's progress, not JAX's
    args = sys.argv[1:] if argv is None else argv
    if "--finalize" in args:  # the last step of a multi-worker preparation
        p = cli.parser("data.prepare", __doc__)
        p.add_argument("--finalize", action="store_true", required=True)
        p.add_argument("--out", required=True)
        out = p.parse_args(args).out
        with cli.one_line_errors():
            try:
                manifest = finalize_out(out)
            except RuntimeError as e:  # shards not done yet
                raise cli.UsageError(str(e)) from e
        print(json.dumps({"counts": manifest["counts"], "filters": manifest["filters"]}))
        return 0
    opts = parse_args(argv)
    with cli.one_line_errors():  # bad flags, missing source / VQ / tokenizer
        manifest = run(opts)
    if manifest is None:
        print(f"{opts.out}: this worker's shards are done; others are still running")
        return 0
    print(json.dumps({"counts": manifest["counts"], "filters": manifest["filters"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
