"""Sources (folder, csv, jsonl) and image operations (filters, buckets, crops)."""

import numpy as np
import pytest
from PIL import Image

from mars_jax.data import image_ops, sources


def test_folder_source_with_sidecar_captions(tmp_path):
    (tmp_path / "b").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "b" / "z.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("  a cat \n")
    (tmp_path / "notes.md").write_text("ignored")
    got = list(sources.iter_source(str(tmp_path)))
    assert [(e.key, e.caption) for e in got] == [("a.jpg", "a cat"), ("b/z.png", "")]
    assert got[0].image == str(tmp_path / "a.jpg")


def test_csv_source_fields_and_missing_image(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("path,text,lang,refined_caption\nx.png,un chat,fr,a cat on a mat\n,no image,,\n")
    a, b = sources.iter_source(str(p))
    assert (a.key, a.caption, a.lang, a.refined_caption) == (
        "row-1",
        "un chat",
        "fr",
        "a cat on a mat",
    )
    assert a.image == str(tmp_path / "x.png")
    assert b.error == f"{p} row 2: no image field (image/path/file_name/filename)"


def test_source_spec_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        sources.iter_source(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ValueError, match="expected a folder"):
        sources.iter_source(str(tmp_path / "x.parquet"))


def test_load_rgb_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\0" * 50)
    with pytest.raises(image_ops.ImageError, match="k1 .*bad.jpg.*unreadable"):
        image_ops.load_rgb(str(bad), f"k1 ({bad})")
    # A truncated PNG fails at decode time, not later.
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    with pytest.raises(image_ops.ImageError, match="cut"):
        image_ops.load_rgb(str(tmp_path / "cut.png"), "cut")
    gray = image_ops.load_rgb(np.zeros((3, 5), np.uint8), "arr")
    assert gray.mode == "RGB" and gray.size == (5, 3)


def test_filters_buckets_and_hires_sizes():
    assert image_ops.filter_reason(255, 400, 256, 2.0) == "too_small"
    assert image_ops.filter_reason(256, 513, 256, 2.0) == "aspect"
    assert image_ops.filter_reason(256, 512, 256, 2.0) is None
    assert image_ops.filter_reason(300, 400, 256, 2.0, min_long_side=1024) == "too_small_long_side"
    # Short side 256, long side rounded to 64: five long sides per orientation.
    assert image_ops.bucket_size(300, 300, 256, 64, 2.0) == (256, 256)
    assert image_ops.bucket_size(400, 600, 256, 64, 2.0) == (256, 384)
    assert image_ops.bucket_size(1000, 480, 256, 64, 2.0) == (512, 256)
    sizes = {image_ops.bucket_size(256, w, 256, 64, 2.0) for w in range(256, 513)}
    assert sizes == {(256, s) for s in (256, 320, 384, 448, 512)}
    assert image_ops.hires_size((256, 384), 1024, 16) == (688, 1024)
    assert image_ops.hires_size((256, 256), 1024, 16) == (1024, 1024)


def test_resize_cover_crop_is_centred():
    x = np.zeros((10, 30, 3), np.uint8)
    x[:, 10:20] = 255  # a white centre band
    out = image_ops.resize_cover_crop(Image.fromarray(x), (10, 10))
    assert out.shape == (10, 10, 3) and out.min() == 255


def test_tfds_source_through_data_source(tmp_path):
    """A tiny TFDS data set in ArrayRecord format, built and read without TensorFlow."""
    import tensorflow_datasets as tfds

    class MarsTinyCaptions(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            image = tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="bytes")
            features = {"image": image, "captions": {"text": tfds.features.Text()}}
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"val": self._generate_examples()}

        def _generate_examples(self):
            for i in range(3):
                yield i, {"image": np.full((20, 24, 3), i, np.uint8), "captions": {"text": f"c{i}"}}

    MarsTinyCaptions(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    got = list(
        sources.iter_source(
            "tfds:mars_tiny_captions:val", str(tmp_path), tfds_caption_key="captions/text"
        )
    )
    # TFDS stores examples in its own (hashed) order; keys are that order's indices.
    assert [e.key for e in got] == [f"mars_tiny_captions/val/{i}" for i in range(3)]
    assert sorted(e.caption for e in got) == ["c0", "c1", "c2"]
    for e in got:
        assert e.image.shape == (20, 24, 3) and e.image.max() == int(e.caption[1:])
    assert image_ops.load_rgb(got[1].image, "tfds").size == (24, 20)
