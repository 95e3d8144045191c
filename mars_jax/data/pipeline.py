"""Grain input pipelines: prepared shards (or random tokens) → static-shape training batches.

A batch is ``{task: {"tokens", "positions", "valid", "targets", "loss_mask": [B, L] numpy,
"layout": Layout}}`` (ARCHITECTURE.md). Stage I holds ``caption`` (``round(B * caption_ratio)``
rows) and ``t2i`` (the rest); stage II ``t2i``; stage III ``sr``. Each batch holds one bucket
(code grid), so its layout is static; stage II/III have a few buckets, hence a few layouts.

Pipeline per bucket (``grain.MapDataset``): ArrayRecord source → equal-length per-process
slice (``process_index::process_count``, disjoint and covering) → shuffle by seed (reshuffled
every epoch) → repeat → decode + caption choice/dropout (seeded per element) →
``to_iter_dataset`` (undecodable records dropped, logged) → batch. Buckets are interleaved by
``grain.IterDataset.mix`` with weights ∝ their sizes; the interleaving depends on the weights
only, so every process picks the same bucket (layout) at the same step. The stream ends after
exactly ``num_batches(...)`` batches (``num_epochs`` passes), the same count on every process.

Both ``make_train_iterator`` and ``make_synthetic_iterator`` return a ``grain.DatasetIterator``:
``get_state()`` / ``set_state()`` give exact resume, and ``grain.checkpoint.CheckpointHandler``
(registered with Orbax as a checkpoint item) saves it.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

from mars_jax.data import records
from mars_jax.tokens import code_order, formats, vocab

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_LOG_FIRST_N = 5  # per process: name this many bad / truncated records, then count only


# --------------------------------------------------------------------------- batch shapes


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(
            f"global batch {global_batch_size} is not divisible by {process_count} processes"
        )
    return global_batch_size // process_count


def task_batch_sizes(data_config: ml_collections.ConfigDict, local_batch: int) -> dict[str, int]:
    """Rows per task in one per-process batch (stage I: captions = round(B * ratio))."""
    multiple = int(data_config.task_batch_multiple)
    if local_batch % multiple:
        raise ValueError(
            f"data.task_batch_multiple={multiple} does not divide the per-process batch "
            f"{local_batch}"
        )
    if data_config.stage == 1:
        n_caption = int(np.floor(local_batch * data_config.caption_ratio / multiple + 0.5))
        n_caption *= multiple  # rounded half up, to a multiple
        sizes = {formats.T2I: local_batch - n_caption, formats.CAPTION: n_caption}
        return {k: v for k, v in sizes.items() if v > 0}
    return {formats.T2I if data_config.stage == 2 else formats.SR: local_batch}


# --------------------------------------------------------------------------- batch assembly


class AssembleBatch:
    """Examples of one bucket → ``{task: task_batch}``; the first rows become captions."""

    def __init__(self, stage: int, sizes: dict[str, int], text_len: int, hires_order_k: int = 1):
        self.stage, self.sizes, self.text_len = stage, dict(sizes), text_len
        # Stage III with next-K prediction writes the high-res codes region-interleaved, so
        # the K codes predicted together lie far apart (docs/NKTP.md); 1 = raster order.
        self.hires_order_k = hires_order_k
        self.num_truncated = 0

    def _text(self, ex: dict, limit: int) -> np.ndarray:
        ids, cut = formats.truncate(ex["text_ids"], limit)
        if cut:
            self.num_truncated += 1
            if self.num_truncated <= _LOG_FIRST_N:
                log.warning(
                    "record %s: caption of %d tokens truncated to the text slot of %d "
                    "(%d truncated so far in this process)",
                    ex["key"],
                    len(ex["text_ids"]),
                    limit,
                    self.num_truncated,
                )
        return ids

    def __call__(self, examples: Sequence[dict]) -> dict:
        n_caption = self.sizes.get(formats.CAPTION, 0)
        T = self.text_len
        batch: dict[str, Any] = {}
        if n_caption:
            head = examples[:n_caption]
            texts = [self._text(ex, T - 1) for ex in head]
            batch[formats.CAPTION] = formats.caption_batch([ex["codes"] for ex in head], texts, T)
        rest = examples[n_caption:]
        empty = np.zeros(0, np.int32)
        texts = [empty if ex["drop"] else self._text(ex, T) for ex in rest]
        codes = [ex["codes"] for ex in rest]
        if self.stage in (1, 2):
            batch[formats.T2I] = formats.t2i_batch(texts, codes, T)
        else:
            order = code_order.hires_order(np.shape(codes[0]), self.hires_order_k)
            codes = list(code_order.to_sequence_order(np.stack(codes), self.hires_order_k))
            lo = [ex["lo_codes"] for ex in rest]
            batch[formats.SR] = formats.sr_batch(texts, lo, codes, T, hi_order=order)
        return batch


# --------------------------------------------------------------------------- synthetic


def synthetic_image_grids(data_config: ml_collections.ConfigDict) -> list[tuple[int, int]]:
    """The (high-res) code grids of synthetic batches: `data.grids`, times `data.hires_scale`
    in stage III (where `data.grids` are the low-res grids), or there `data.hires_grids`
    when set (one per low-res grid, e.g. the aspect-preserving grids of `image_ops`)."""
    if int(data_config.stage) == 3 and data_config.hires_grids:
        return [(int(h), int(w)) for h, w in data_config.hires_grids]
    scale = int(data_config.hires_scale) if int(data_config.stage) == 3 else 1
    return [(int(h) * scale, int(w) * scale) for h, w in data_config.grids]


class _SyntheticBatch:
    """Batch ``step`` of a random but well-formed stream; a pure function of (seed, step)."""

    def __init__(
        self, data_config, sizes, process_index: int, seed: int, codebook_size: int, order_k: int
    ):
        self.stage = int(data_config.stage)
        self.text_len = int(data_config.text_len)
        self.grids = [tuple(int(x) for x in g) for g in data_config.grids]
        self.image_grids = synthetic_image_grids(data_config)  # high-res in stage III
        self.codebook_size = min(int(codebook_size), vocab.NUM_IMAGE_CODES)
        self.dropout = float(data_config.caption_dropout)
        self.assemble = AssembleBatch(self.stage, sizes, self.text_len, order_k)
        self.batch_rows = sum(sizes.values())
        self.process_index, self.seed = process_index, seed

    def __call__(self, step: int) -> dict:
        # The bucket depends on (seed, step) only: the same layout on every process.
        bucket = np.random.default_rng([self.seed, step]).integers(len(self.grids))
        grid, image_grid = self.grids[bucket], self.image_grids[bucket]
        rng = np.random.default_rng([self.seed, step, self.process_index, 1])
        examples = []
        for i in range(self.batch_rows):
            n_text = int(rng.integers(0, self.text_len))
            ex = {
                "key": f"synthetic-{step}-{i}",
                "text_ids": rng.integers(0, vocab.ENDOFTEXT, n_text, dtype=np.int32),
                "drop": bool(rng.random() < self.dropout),
            }
            if self.stage == 3:
                ex["lo_codes"] = rng.integers(0, self.codebook_size, grid, dtype=np.int32)
            ex["codes"] = rng.integers(0, self.codebook_size, image_grid, dtype=np.int32)
            examples.append(ex)
        return self.assemble(examples)


def make_synthetic_iterator(
    data_config: ml_collections.ConfigDict,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    seed: int | None = None,
    *,
    codebook_size: int = vocab.NUM_IMAGE_CODES,
    hires_order_k: int = 1,
) -> grain.DatasetIterator:
    """Endless random batches in the real format, with the same state API as the real one.

    `codebook_size`: codes drawn (the model's `codebook_size`); `hires_order_k`: the stage-III
    code order of a model with that many next-K heads (`model.nktp_k`)."""
    seed = int(data_config.seed if seed is None else seed)
    sizes = task_batch_sizes(data_config, local_batch_size(global_batch_size, process_count))
    make = _SyntheticBatch(data_config, sizes, process_index, seed, codebook_size, hires_order_k)
    ds = grain.MapDataset.range(0, 2**62).map(make).to_iter_dataset()
    return iter(ds)


# --------------------------------------------------------------------------- real shards


class BadRecordError(RuntimeError):
    """A record that cannot be read or decoded, with ``data.on_bad_record='stop'`` (or more
    than ``data.max_bad_records`` of them); the message names the shard and record."""


# Records skipped in this process (all buckets); the trainer logs it as data/bad_records.
_BAD_RECORDS = {"count": 0}


def bad_record_count() -> int:
    return _BAD_RECORDS["count"]


def load_manifest(shards_dir: str) -> dict:
    path = os.path.join(shards_dir, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"data.shards={shards_dir!r}: no {MANIFEST} (run `python -m mars_jax.data.prepare`, "
            "and let it finish)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(
            f"data.shards={shards_dir!r}: {MANIFEST} is truncated or not JSON ({e}); "
            "rerun `python -m mars_jax.data.prepare` with the same flags to rewrite it"
        ) from None
    if manifest.get("schema_version") != records.SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {manifest.get('schema_version')} is not the supported "
            f"{records.SCHEMA_VERSION}"
        )
    return manifest


def shards_errors(shards_dir: str, limit: int = 5) -> list[str]:
    """Start-up check of prepared shards, one line per problem (manifest missing or
    truncated, a listed shard missing, unreadable or with another record count)."""
    try:
        manifest = load_manifest(shards_dir)
        buckets = manifest.get("buckets", {})  # a manifest without buckets: checked later
        listed = [
            (rel, int(count))
            for _, b in sorted(buckets.items())
            for rel, count in zip(b["files"], b["file_counts"], strict=True)
        ]
    except (OSError, ValueError, KeyError, TypeError) as e:
        text = " ".join(str(e).split())
        return [text if text.startswith("data.shards") else f"data.shards={shards_dir!r}: {text}"]

    problems = []
    for rel, count in listed:
        path = os.path.join(shards_dir, rel)
        if not os.path.exists(path):
            problems.append(f"data.shards={shards_dir!r}: shard {rel} (in {MANIFEST}) is missing")
            continue
        try:
            reader = ArrayRecordReader(path)
            try:
                n = reader.num_records()
            finally:
                reader.close()
        except Exception as e:  # a truncated file fails in the reader
            why = " ".join(str(e).split())[:160]
            problems.append(
                f"data.shards={shards_dir!r}: shard {rel} is unreadable (truncated?): {why}"
            )
            continue
        if n != count:
            problems.append(
                f"data.shards={shards_dir!r}: shard {rel} has {n} records, {MANIFEST} lists {count}"
            )
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more shard problems"]
    return problems


def truncation_stats(manifest: dict, text_len: int) -> dict[str, int]:
    """How many records' texts exceed the text slot (from the manifest's length histograms)."""
    out = {}
    for field in ("text", "refined_text"):
        hist = manifest.get("text_len_histogram", {}).get(field, {})
        out[field] = sum(int(c) for n, c in hist.items() if int(n) > text_len)
    return out


def _bad_record(where: str, why: str, policy: str, max_bad: int) -> None:
    """Count one bad record; raise ``BadRecordError`` when the policy or the limit says so."""
    _BAD_RECORDS["count"] += 1
    n = _BAD_RECORDS["count"]
    if policy == "stop":
        raise BadRecordError(f"{where}: {why} (data.on_bad_record='stop')")
    if max_bad and n > max_bad:
        raise BadRecordError(
            f"{where}: {why}; {n} bad records skipped in this process, more than "
            f"data.max_bad_records={max_bad}"
        )
    if n <= _LOG_FIRST_N:
        log.error("skipping bad record (%d in this process so far): %s: %s", n, where, why)


class _CheckedSource:
    """An ArrayRecord source whose failed reads (a garbled chunk raises ``RuntimeError:
    Corrupted Riegeli ... hash mismatch``) yield ``None`` (counted as bad records) or raise
    ``BadRecordError`` by ``data.on_bad_record``."""

    def __init__(self, source, where, policy: str, max_bad: int):
        self.source, self.where, self.policy, self.max_bad = source, where, policy, max_bad

    def __len__(self) -> int:
        return len(self.source)

    def _read_failed(self, index: int, e: Exception) -> None:
        why = "unreadable record (" + " ".join(str(e).split())[:160] + ")"
        _bad_record(self.where(index), why, self.policy, self.max_bad)

    def __getitem__(self, index):
        try:
            return self.source[index]
        except Exception as e:  # riegeli raises RuntimeError / ValueError
            self._read_failed(index, e)
            return None

    def _getitems(self, indices):
        try:
            return self.source._getitems(indices)  # a batched read
        except Exception:  # one bad record: read one by one
            return [self[i] for i in indices]


class _ToExample(grain.transforms.RandomMap):
    """``(source index, bytes)`` → example dict; an undecodable record → None (logged)."""

    def __init__(
        self,
        files,
        counts,
        grid,
        lo_grid,
        codebook_size,
        refined_prob,
        dropout,
        policy="skip",
        max_bad=0,
    ):
        self.files, self.num_records = list(files), sum(counts)
        self.offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        self.grid, self.lo_grid = tuple(grid), (tuple(lo_grid) if lo_grid else None)
        self.codebook_size, self.refined_prob, self.dropout = codebook_size, refined_prob, dropout
        self.policy, self.max_bad = policy, max_bad
        self.num_bad = 0

    def _where(self, index: int) -> str:
        index %= self.num_records  # indices of later epochs run past the end
        f = bisect.bisect_right(self.offsets, index) - 1
        return f"{self.files[f]} record {index - self.offsets[f]}"

    def random_map(self, element, rng: np.random.Generator):
        index, data = element
        if data is None:  # unreadable: counted by _CheckedSource
            self.num_bad += 1
            return None
        where = self._where(index)
        try:
            rec = records.decode_record(data, where, self.codebook_size)
            if rec["codes"].shape != self.grid or (
                self.lo_grid and rec.get("lo_codes", np.zeros(0)).shape != self.lo_grid
            ):
                raise records.RecordError(f"{where}: code grid does not match its bucket")
        except records.RecordError as e:
            self.num_bad += 1
            _bad_record(where, str(e).removeprefix(where + ": "), self.policy, self.max_bad)
            return None
        use_refined = rec["refined_ids"].size > 0 and rng.random() < self.refined_prob
        ex = {
            "key": rec["key"],
            "text_ids": rec["refined_ids"] if use_refined else rec["text_ids"],
            "codes": rec["codes"],
            "drop": bool(rng.random() < self.dropout),
        }
        if "lo_codes" in rec:
            ex["lo_codes"] = rec["lo_codes"]
        return ex


def _bucket_dataset(
    shards_dir, bucket, data_config, sizes, process_index, process_count, seed, order_k
):
    files = [os.path.join(shards_dir, f) for f in bucket["files"]]
    source = grain.sources.ArrayRecordDataSource(files)
    counts = [int(c) for c in bucket["file_counts"]]
    if sum(counts) != len(source):
        raise ValueError(
            f"{shards_dir}: bucket {bucket['name']} has {len(source)} records on disk but "
            f"the manifest lists {sum(counts)}"
        )
    per_process = len(source) // process_count
    local_batch = sum(sizes.values())
    if per_process < local_batch:
        return None, per_process
    to_example = _ToExample(
        bucket["files"],
        counts,
        bucket["grid"],
        bucket.get("lo_grid"),
        int(bucket["codebook_size"]),
        float(data_config.refined_caption_prob),
        float(data_config.caption_dropout),
        str(data_config.on_bad_record),
        int(data_config.max_bad_records),
    )
    source = _CheckedSource(source, to_example._where, to_example.policy, to_example.max_bad)
    ds = grain.MapDataset.source(source).map_with_index(lambda i, x: (i, x))
    ds = ds[: per_process * process_count][process_index::process_count]
    ds = ds.shuffle(seed=seed).repeat()  # endless, reshuffled every epoch; cut in the caller
    # Caption choice / dropout: independent streams per process (the slices differ anyway).
    element_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])
    ds = ds.random_map(to_example, seed=element_seed)
    read = grain.ReadOptions(num_threads=int(data_config.read_threads), prefetch_buffer_size=64)
    ds = ds.to_iter_dataset(read)
    assemble = AssembleBatch(int(data_config.stage), sizes, int(data_config.text_len), order_k)
    return ds.batch(local_batch, drop_remainder=True, batch_fn=assemble), per_process


def _num_batches(per_process: dict[str, float], num_epochs: int, local_batch: int) -> int:
    return sum(int(num_epochs * n) // local_batch for n in per_process.values())


def num_batches(
    data_config: ml_collections.ConfigDict, global_batch_size: int, process_count: int = 1
) -> int:
    """Exactly how many batches ``make_train_iterator`` yields (the same on every process):
    ``num_epochs`` passes over each bucket that fills a batch, without partial batches.

    Bucket streams repeat endlessly and are cut at this count, so a few skipped bad records
    never end the stream early or make processes disagree on its length.
    """
    manifest = load_manifest(data_config.shards)
    sizes = task_batch_sizes(data_config, local_batch_size(global_batch_size, process_count))
    local_batch = sum(sizes.values())
    per_process = {}
    for name, b in manifest["buckets"].items():
        n = sum(int(c) for c in b["file_counts"]) // process_count
        if n >= local_batch:
            per_process[name] = n
    return _num_batches(per_process, int(data_config.num_epochs), local_batch)


def _ensure_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; a non-absl entry point must mark them parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_iterator(
    data_config: ml_collections.ConfigDict,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    seed: int | None = None,
    *,
    codebook_size: int = vocab.NUM_IMAGE_CODES,
    hires_order_k: int = 1,
) -> grain.DatasetIterator:
    """This process's slice (global batch / process_count rows) of the stage's batches.

    `codebook_size` (synthetic data) and `hires_order_k` (stage III) are the model's."""
    if data_config.synthetic:
        return make_synthetic_iterator(
            data_config, global_batch_size, process_index, process_count, seed,
            codebook_size=codebook_size, hires_order_k=hires_order_k,
        )  # fmt: skip
    seed = int(data_config.seed if seed is None else seed)
    shards_dir = data_config.shards
    manifest = load_manifest(shards_dir)
    _BAD_RECORDS["count"] = 0  # counted per training run
    if int(manifest["stage"]) != int(data_config.stage):
        raise ValueError(
            f"data.stage={data_config.stage} but {shards_dir} holds "
            f"stage-{manifest['stage']} shards"
        )
    sizes = task_batch_sizes(data_config, local_batch_size(global_batch_size, process_count))
    for field, n in truncation_stats(manifest, int(data_config.text_len)).items():
        if n:
            log.warning(
                "%s: %d records' %s exceed data.text_len=%d tokens and will be truncated",
                shards_dir,
                n,
                field,
                data_config.text_len,
            )
    datasets, weights = {}, {}
    for name in sorted(manifest["buckets"]):
        bucket = dict(manifest["buckets"][name], name=name, codebook_size=manifest["codebook_size"])
        ds, n = _bucket_dataset(
            shards_dir, bucket, data_config, sizes, process_index, process_count, seed,
            hires_order_k,
        )  # fmt: skip
        if ds is None:
            log.warning("bucket %s: %d records per process, fewer than one batch; unused", name, n)
            continue
        datasets[name], weights[name] = ds, float(n)
    if not datasets:
        raise ValueError(
            f"{shards_dir}: no bucket has a full per-process batch of {sum(sizes.values())} records"
        )
    if len(datasets) == 1:
        ds = next(iter(datasets.values()))
    else:
        ds = grain.IterDataset.mix(datasets, weights)
    if int(data_config.worker_count) > 0:
        _ensure_absl_flags_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=int(data_config.worker_count),
                per_worker_buffer_size=int(data_config.worker_buffer_size),
            )
        )
    total = _num_batches(weights, int(data_config.num_epochs), sum(sizes.values()))
    ds = grain.experimental.LimitIterDataset(ds, count=total)
    return iter(ds)
