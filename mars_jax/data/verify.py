"""``python -m mars_jax.data.verify <shards dir>``: check every record of a prepared data set.

The training pipeline skips a bad record and logs it; this scans all shards up front and lists
every problem (file, record index, reason) — counts against the manifest, checksums, code and
text ranges, and whether each record's grid matches its bucket — so bad shards can be
re-prepared before a long run. Exit status 1 when anything is wrong.
"""

from __future__ import annotations

import json
import os
import sys

from mars_jax import cli
from mars_jax.data import pipeline, records


def verify_shards(shards_dir: str) -> dict:
    """``{"records": n, "bad": [{"file", "record", "error"}], "files": n}`` for ``shards_dir``."""
    manifest = pipeline.load_manifest(shards_dir)
    codebook_size = int(manifest["codebook_size"])
    bad, total, files = [], 0, 0
    for name, bucket in sorted(manifest["buckets"].items()):
        for rel, count in zip(bucket["files"], bucket["file_counts"], strict=True):
            files += 1
            path = os.path.join(shards_dir, rel)
            try:
                data = records.read_shard(path)
            except Exception as e:  # an unreadable file is a finding, not a crash
                bad.append({"file": rel, "record": None, "error": f"unreadable shard: {e}"})
                continue
            if len(data) != int(count):
                bad.append(
                    {"file": rel, "record": None, "error": f"{len(data)} records, manifest {count}"}
                )
            for i, raw in enumerate(data):
                total += 1
                try:
                    rec = records.decode_record(raw, f"{rel} record {i}", codebook_size)
                    if list(rec["codes"].shape) != list(bucket["grid"]):
                        raise records.RecordError(f"{rel} record {i}: grid not that of {name}")
                except records.RecordError as e:
                    bad.append({"file": rel, "record": i, "error": str(e)})
    return {"records": total, "files": files, "bad": bad}


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("data.verify", __doc__)
    p.add_argument("shards", help="a directory written by `python -m mars_jax.data.prepare`")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    with cli.one_line_errors():
        if not os.path.isdir(args.shards):
            raise cli.UsageError(f"{args.shards}: no such directory")
        try:
            report = verify_shards(args.shards)
        except (KeyError, TypeError) as e:  # a truncated or hand-edited manifest.json
            raise cli.UsageError(f"{args.shards}: bad manifest ({' '.join(str(e).split())})") from e
    for b in report["bad"]:
        print(json.dumps(b))
    print(f"{report['records']} records in {report['files']} files; {len(report['bad'])} bad")
    return 1 if report["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
