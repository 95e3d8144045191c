"""Schema of one training record in the ArrayRecord shards, and its checked (de)serialisation.

A record is ``MAGIC | crc32(payload) | payload`` with ``payload`` a msgpack map:

| field | type | meaning |
|---|---|---|
| ``key`` | str | source key (file name, jsonl line, TFDS index) |
| ``caption`` / ``refined_caption`` | str | raw caption texts ("" when absent) |
| ``text`` / ``refined_text`` | str | the text that was tokenized (stage II/III: with resolution) |
| ``text_ids`` / ``refined_ids`` | bytes | int32 Qwen token ids of ``text`` / ``refined_text`` |
| ``lang`` | str | language tag, "" when unknown |
| ``orig_hw`` | [int, int] | source image size |
| ``image_hw`` / ``grid`` | [int, int] | encoded image size and its code grid |
| ``codes`` | bytes | uint16 codes, row-major ``grid`` |
| ``lo_image_hw`` / ``lo_grid`` / ``lo_codes`` | | stage III only: the low-res image |

The checksum turns a truncated or garbled record into a clear error rather than wrong data.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
import numpy as np

from mars_jax.tokens import vocab

SCHEMA_VERSION = 1
MAGIC = b"MJR1"
_HEADER = struct.Struct("<4sI")


class RecordError(ValueError):
    """A record that cannot be decoded or fails its checks; the message names the record."""


def _ids_bytes(ids: Any) -> bytes:
    return np.asarray(ids, dtype=np.int32).reshape(-1).tobytes()


def encode_record(record: dict[str, Any]) -> bytes:
    """Serialise one record (fields as in the module docstring; arrays may be numpy)."""
    payload: dict[str, Any] = {
        "key": str(record["key"]),
        "caption": record.get("caption", ""),
        "refined_caption": record.get("refined_caption", "") or "",
        "text": record.get("text", record.get("caption", "")),
        "refined_text": record.get("refined_text", "") or "",
        "text_ids": _ids_bytes(record["text_ids"]),
        "refined_ids": _ids_bytes(record.get("refined_ids", ())),
        "lang": record.get("lang", "") or "",
        "orig_hw": [int(x) for x in record["orig_hw"]],
        "image_hw": [int(x) for x in record["image_hw"]],
    }
    for prefix in ("", "lo_"):
        codes = record.get(prefix + "codes")
        if codes is None:
            continue
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise ValueError(f"record {payload['key']}: {prefix}codes must be [h, w]")
        vocab.check_codes_in_range(codes, vocab.NUM_IMAGE_CODES, f"record {payload['key']}")
        payload[prefix + "grid"] = list(codes.shape)
        payload[prefix + "codes"] = codes.astype(np.uint16).tobytes()
        if prefix:
            payload["lo_image_hw"] = [int(x) for x in record["lo_image_hw"]]
    body = msgpack.packb(payload, use_bin_type=True)
    return _HEADER.pack(MAGIC, zlib.crc32(body)) + body


def decode_record(data: bytes, where: str, codebook_size: int = vocab.NUM_IMAGE_CODES) -> dict:
    """Parse and check one record; ``where`` (shard file and index) goes into every error."""
    if len(data) < _HEADER.size:
        raise RecordError(f"{where}: record of {len(data)} bytes is truncated")
    magic, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RecordError(f"{where}: not a mars_jax record (magic {magic!r})")
    body = data[_HEADER.size :]
    if zlib.crc32(body) != crc:
        raise RecordError(f"{where}: checksum mismatch (truncated or garbled record)")
    try:
        p = msgpack.unpackb(body, raw=False)
        out = {
            "key": p["key"],
            "caption": p["caption"],
            "refined_caption": p["refined_caption"],
            "text": p["text"],
            "refined_text": p["refined_text"],
            "text_ids": np.frombuffer(p["text_ids"], np.int32),
            "refined_ids": np.frombuffer(p["refined_ids"], np.int32),
            "lang": p["lang"],
            "orig_hw": tuple(p["orig_hw"]),
            "image_hw": tuple(p["image_hw"]),
            "codes": np.frombuffer(p["codes"], np.uint16).reshape(p["grid"]).astype(np.int32),
        }
        if "lo_codes" in p:
            lo = np.frombuffer(p["lo_codes"], np.uint16).reshape(p["lo_grid"]).astype(np.int32)
            out["lo_codes"] = lo
            out["lo_image_hw"] = tuple(p["lo_image_hw"])
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as e:
        raise RecordError(f"{where}: malformed record payload ({type(e).__name__}: {e})") from e
    for name in ("codes", "lo_codes"):
        if name in out:
            try:
                vocab.check_codes_in_range(out[name], codebook_size, f"{where} ({name})")
            except ValueError as e:
                raise RecordError(str(e)) from e
    for name in ("text_ids", "refined_ids"):
        ids = out[name]
        if ids.size and (ids.min() < 0 or ids.max() >= vocab.TEXT_VOCAB_SIZE):
            raise RecordError(
                f"{where}: {name} out of the text range [0, {vocab.TEXT_VOCAB_SIZE}): "
                f"min {int(ids.min())}, max {int(ids.max())}"
            )
    return out


def write_shard(path: str, records: list[bytes]) -> None:
    """Write serialised records to one ArrayRecord file (group_size 1: fast random access)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(path, "group_size:1")
    try:
        for r in records:
            writer.write(r)
    finally:
        writer.close()


def read_shard(path: str) -> list[bytes]:
    """All serialised records of one ArrayRecord file, in order."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        return list(reader.read_all())
    finally:
        reader.close()
