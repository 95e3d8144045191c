"""prepare CLI end to end: generated images → real ArrayRecord shards → Grain batches (3 stages).

Uses a tiny random VQ-GAN (factor 4, 64 codes) saved with ``save_vq``, the real Qwen tokenizer,
and small images, so each stage compiles the encoder for a couple of shapes only.
"""

import json
import os
import re

import jax
import numpy as np
import pytest
from PIL import Image

from mars_jax.data import pipeline, prepare, records, verify
from mars_jax.data.config import default_data_config
from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.tokens import formats, vocab
from mars_jax.vq import images as vq_images
from mars_jax.vq import model as vq_model
from mars_jax.vq.checkpoint import load_vq, save_vq
from mars_jax.vq.config import VQConfig

TINY_VQ = VQConfig(
    base_channels=8,
    ch_mult=(1, 1, 1),
    num_res_blocks=1,
    attn_resolutions=(),
    mid_attention=False,
    z_channels=4,
    embed_dim=4,
    codebook_size=64,
    resolution=16,
    norm_groups=4,
)
# (height, width) of the generated images; the last three are filtered or broken.
SIZES = [(24, 24), (20, 28), (28, 20), (24, 40), (22, 22), (30, 30), (26, 40), (40, 24)]


def _image(rng, hw):
    y, x = np.mgrid[0 : hw[0], 0 : hw[1]]
    base = rng.uniform(0, 255, 3) + 60 * np.sin(x[..., None] / rng.uniform(2, 6) + y[..., None])
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A jsonl source: 8 good images, a corrupt file, a missing file, a tiny and a wide image."""
    d = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    rows = []
    for i, hw in enumerate(SIZES):
        _image(rng, hw).save(d / f"img{i}.png")
        caption = "a red square" if i != 3 else " ".join(["word"] * 200)  # too long for T
        rows.append({"image": f"img{i}.png", "caption": caption, "key": f"k{i}"})
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    rows.insert(2, {"image": "corrupt.png", "caption": "broken", "key": "corrupt"})
    rows.append({"image": "missing.png", "caption": "gone", "key": "missing"})
    _image(rng, (8, 8)).save(d / "tiny.png")
    _image(rng, (16, 48)).save(d / "wide.png")
    rows += [{"image": "tiny.png", "key": "tiny"}, {"image": "wide.png", "key": "wide"}]
    lines = [json.dumps(r) for r in rows]
    lines.insert(4, "{not json")
    (d / "data.jsonl").write_text("\n".join(lines) + "\n")
    vq_dir = str(d / "vq")
    save_vq(vq_dir, TINY_VQ, vq_model.init(TINY_VQ, jax.random.key(0)))
    return d, vq_dir


def _opts(raw, out, stage, **kw):
    d, vq_dir = raw
    base = dict(
        stage=stage,
        source=str(d / "data.jsonl"),
        out=str(out),
        vq=vq_dir,
        batch_size=4,
        shard_size=5,
        min_side=16,
        image_size=16,
        short_side=16,
        bucket_multiple=8,
        hires_long_side=32,
        min_long_side=0,
        num_threads=2,
        progress=False,
    )
    base.update(kw)
    return prepare.PrepareOptions(**base)


def _all_records(out, manifest):
    recs = []
    for b in manifest["buckets"].values():
        for f in b["files"]:
            recs += [records.decode_record(r, f) for r in records.read_shard(os.path.join(out, f))]
    return recs


@pytest.fixture(scope="module")
def stage1(raw, tmp_path_factory):
    """Stage I through the command line (argparse flags → PrepareOptions → run)."""
    out = tmp_path_factory.mktemp("s1")
    o = _opts(raw, out, 1)
    argv = [f"--{k}={getattr(o, k)}" for k in ("stage", "source", "out", "vq", "batch_size")]
    argv += [f"--{k}={getattr(o, k)}" for k in ("shard_size", "min_side", "image_size")]
    assert prepare.main(argv + ["--num_threads=2", "--no_progress"]) == 0
    with open(out / "manifest.json") as f:
        return out, json.load(f)


def test_stage1_manifest_counts_and_skips(stage1, raw):
    out, m = stage1
    assert m["counts"] == {"seen": 13, "written": 8, "skipped": 3}
    assert m["filters"] == {"unreadable": 2, "bad_row": 1, "too_small": 1, "aspect": 1}
    assert m["buckets"]["4x4"]["count"] == 8 and m["num_shards"] == 3
    skipped = [json.loads(x) for x in open(os.path.join(out, "skipped.jsonl"))]
    assert {s["key"] for s in skipped} == {"corrupt", "missing", "line-5"}
    corrupt = next(s for s in skipped if s["key"] == "corrupt")
    assert "corrupt.png" in corrupt["error"] and "unreadable" in corrupt["error"]
    assert m["vq"]["identity"] and m["tokenizer"]["sha256"] and m["codebook_size"] == 64
    assert verify.verify_shards(str(out)) == {"records": 8, "files": 2, "bad": []}


def test_stage1_records_match_direct_encoding(stage1, raw):
    out, m = stage1
    d, vq_dir = raw
    recs = {r["key"]: r for r in _all_records(out, m)}
    assert sorted(recs) == sorted(f"k{i}" for i in range(8))  # nothing good lost
    cfg, params = load_vq(vq_dir)
    img = Image.open(d / "img3.png").convert("RGB")
    # Independent crop: resize the short side to 16 with PIL, centre-crop by hand.
    small = img.resize((27, 16), Image.Resampling.BICUBIC, reducing_gap=3.0)
    crop = np.asarray(small)[:, 5:21]
    want = vq_images.encode_uint8(params, cfg, crop[None])[0]
    np.testing.assert_array_equal(recs["k3"]["codes"], np.asarray(want))
    tok = load_tokenizer()
    assert tok.decode(recs["k0"]["text_ids"]) == "a red square" == recs["k0"]["caption"]
    assert recs["k3"]["orig_hw"] == (24, 40) and recs["k3"]["image_hw"] == (16, 16)


def test_stage1_batches_and_truncation(stage1, caplog):
    out, _ = stage1
    c = default_data_config(1)
    c.update(shards=str(out), text_len=16, caption_ratio=0.5, caption_dropout=0.0)
    with caplog.at_level("WARNING"):
        it = pipeline.make_train_iterator(c, global_batch_size=8)
        batch = next(it)
    assert set(batch) == {"t2i", "caption"}
    assert batch["caption"]["layout"] == formats.caption_layout(16, (4, 4))
    for task in batch.values():
        formats.check_layout(task)
        assert task["tokens"].shape == (4, 16 + 18)
    # The long caption of k3: counted from the manifest, and named when it is cut.
    assert "1 records' text exceed data.text_len=16" in caplog.text
    assert "record k3: caption of 200 tokens truncated" in caplog.text


def test_resume_after_crash_has_no_duplicates(raw, tmp_path, stage1):
    out = tmp_path / "s1"
    opts = _opts(raw, out, 1)
    first = prepare.run(opts)
    # Simulate a crash in shard 1: marker gone, a half-written temp file left behind.
    os.remove(out / "done" / "shard-00001.json")
    os.remove(out / "manifest.json")
    (out / "4x4" / ".tmp-shard-00001.array_record").write_bytes(b"partial")
    again = prepare.run(opts)
    assert again["counts"] == first["counts"] and again["buckets"] == first["buckets"]
    keys = [r["key"] for r in _all_records(str(out), again)]
    assert len(keys) == len(set(keys)) == 8
    assert not list((out / "4x4").glob(".tmp-*"))
    with pytest.raises(ValueError, match="other settings.*image_size"):
        prepare.run(_opts(raw, out, 1, image_size=32))


def test_stage2_buckets_and_resolution_text(raw, tmp_path):
    m = prepare.run(_opts(raw, tmp_path, 2))
    # Short side 16, long side rounded to 8 px: 16x16, 16x24 and 24x16.
    assert set(m["buckets"]) == {"4x4", "4x6", "6x4"}
    recs = {r["key"]: r for r in _all_records(str(tmp_path), m)}
    assert recs["k1"]["image_hw"] == (16, 24) and recs["k1"]["text"] == "24x16 a red square"
    assert recs["k2"]["codes"].shape == (6, 4)
    c = default_data_config(2)
    c.update(shards=str(tmp_path), text_len=24, caption_dropout=0.0, num_epochs=2)
    tok = load_tokenizer()
    seen = set()
    for batch in pipeline.make_train_iterator(c, global_batch_size=1):
        t2i = batch["t2i"]
        formats.check_layout(t2i)
        (_, n_text), (_, n_img) = t2i["layout"]
        text = tok.decode(t2i["tokens"][0, :n_text][t2i["valid"][0, :n_text]])
        w, h = (int(x) for x in text.split()[0].split("x"))
        assert n_img == (h // 4) * (w // 4) + 2  # the layout matches the resolution text
        seen.add((w, h))
    assert seen == {(16, 16), (24, 16), (16, 24)}


def test_stage3_sr_pairs(raw, tmp_path):
    m = prepare.run(_opts(raw, tmp_path, 3))
    recs = {r["key"]: r for r in _all_records(str(tmp_path), m)}
    r = recs["k1"]  # 20x28 → low-res 16x24, high-res long side 32: 24x32 (rounded to 4)
    assert r["lo_image_hw"] == (16, 24) and r["image_hw"] == (20, 32)
    assert r["lo_codes"].shape == (4, 6) and r["codes"].shape == (5, 8)
    assert r["text"] == "32x20 a red square"
    c = default_data_config(3)
    c.update(shards=str(tmp_path), text_len=24, caption_dropout=1.0)
    batch = next(pipeline.make_train_iterator(c, global_batch_size=1))
    sr = batch["sr"]
    formats.check_layout(sr)
    assert not sr["valid"][0, :24].any()  # dropped caption: empty text slot
    assert sr["tokens"][0, 24] == vocab.LOWRES_START and sr["positions"][0, 24] == 0
    (_, n_text), (_, n_vis) = sr["layout"]
    lo_n = next(
        b["lo_grid"][0] * b["lo_grid"][1]
        for b in m["buckets"].values()
        if 4 + b["lo_grid"][0] * b["lo_grid"][1] + b["grid"][0] * b["grid"][1] == n_vis
    )
    start = formats.sr_hires_start(n_text, (1, lo_n))
    assert sr["tokens"][0, start] == vocab.IMAGE_START
    assert (
        sr["loss_mask"][0, :start].sum() == 0
        and sr["loss_mask"][0, start:].sum() == n_vis - lo_n - 3
    )


def test_bad_jsonl_lines_are_skipped_counted_and_listed(raw, tmp_path):
    """Non-UTF-8 caption bytes, a lone surrogate, a non-JSON line and a line without an image
    field among good lines: each one skipped record (line number, reason), never the end."""
    d, _ = raw
    good = [
        json.dumps({"image": str(d / f"img{i}.png"), "caption": "ok", "key": f"g{i}"})
        for i in (0, 1, 2)
    ]
    lines = [
        good[0].encode(),
        b'{"image": "' + str(d / "img4.png").encode() + b'", "caption": "caf\xe9 \xff"}',
        good[1].encode(),
        b'{"image": "' + str(d / "img5.png").encode() + b'", "caption": "bad \\udcff"}',
        b"this is not json",
        b'{"caption": "no image here"}',
        good[2].encode(),
    ]
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    m = prepare.run(_opts(raw, out, 1, source=str(source)))
    assert m["counts"]["written"] == 3 and m["counts"]["seen"] == 7
    assert m["filters"].get("bad_row") == 4
    skipped = {s["line"]: s for s in map(json.loads, open(out / "skipped.jsonl"))}
    assert sorted(skipped) == [2, 4, 5, 6]
    assert "not UTF-8" in skipped[2]["error"]
    assert "not valid Unicode" in skipped[4]["error"]
    assert "bad JSON" in skipped[5]["error"]
    assert "no image field" in skipped[6]["error"]
    assert all(s["reason"] == "bad_row" for s in skipped.values())


def test_failed_prepare_does_not_block_the_corrected_rerun(raw, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError):
        prepare.run(_opts(raw, out, 1, source=str(tmp_path / "typo.jsonl")))
    assert not (out / prepare.CONFIG).exists()  # nothing written for a missing source
    # A run that wrote its settings but failed before finishing a shard.
    prepare.run(_opts(raw, out, 1, image_size=32, shard_size=100))
    for marker in (out / "done").glob("*.json"):
        marker.unlink()
    (out / prepare.MANIFEST).unlink()
    m = prepare.run(_opts(raw, out, 1))  # other settings: accepted, no shard was done
    assert m["counts"]["written"] == 8
    with pytest.raises(SystemExit) as exit_info:  # one error line, exit status 2
        prepare.main(
            [
                "--stage=1",
                f"--source={tmp_path / 'none.jsonl'}",
                f"--out={out}",
                "--vq=/nonexistent",
            ]
        )
    assert exit_info.value.code == 2


def test_workers_then_finalize_equals_one_run(raw, tmp_path, stage1, capsys):
    """Two workers split the shards (a job array's tasks); the final `--finalize` step writes
    the manifest, and fails naming the shards not done while a worker is missing."""
    _, single = stage1
    out = tmp_path / "s1w"
    assert prepare.run(_opts(raw, out, 1, num_workers=2, worker_index=0)) is None
    assert not (out / "manifest.json").exists()
    with pytest.raises(SystemExit):
        prepare.main(["--finalize", f"--out={out}"])
    assert re.search(r"1 of 3 shards .* not done: \[1\]", capsys.readouterr().err)
    assert prepare.run(_opts(raw, out, 1, num_workers=2, worker_index=1)) is not None
    os.remove(out / "manifest.json")  # the last worker wrote it; the final step writes it again
    assert prepare.main(["--finalize", f"--out={out}"]) == 0
    with open(out / "manifest.json") as f:
        m = json.load(f)
    assert m["counts"] == single["counts"] and m["buckets"] == single["buckets"]
    assert m["filters"] == single["filters"] and m["num_shards"] == 3
