"""Demo scenes: determinism, held-out split, bilingual captions, files readable by prepare."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mars_jax.data import sources
from mars_jax.demo import build, shapes


def test_examples_are_deterministic_and_independent_of_count():
    a = shapes.make_dataset(40, seed=3)
    b = shapes.make_dataset(20, seed=3)
    np.testing.assert_array_equal(a.images[:20], b.images)
    assert a.captions[:20] == b.captions and a.specs[:20] == b.specs
    c = shapes.make_dataset(20, seed=4)
    assert c.captions != b.captions


def test_held_out_combinations_only_in_eval_while_every_object_type_is_trained():
    data = shapes.make_dataset(400)
    assert not any(shapes.is_held_out(s) for s in data.specs)
    assert {(o.color, o.shape) for s in data.specs for o in s.objects} == set(shapes.ALL_PAIRS)
    prompts = shapes.eval_prompts(32)
    specs = [shapes.SceneSpec.from_json(p["spec"]) for p in prompts]
    assert all(shapes.is_held_out(s) for s in specs)
    assert {s.kind for s in specs} == {"single", "count", "relation"}
    # The rule for relations ignores order and relation: the pair itself is held out.
    rel = next(s for s in specs if s.kind == "relation")
    a, b = rel.objects
    swapped = shapes.SceneSpec("relation", (b, a), relation="above")
    assert shapes.is_held_out(swapped)


def test_captions_are_bilingual_and_name_the_attributes():
    data = shapes.make_dataset(300)
    share_en = np.mean([lang == "en" for lang in data.langs])
    assert 0.4 < share_en < 0.6
    assert {s.kind for s in data.specs} == {"single", "count", "relation"}
    for spec, text, lang in zip(data.specs, data.captions, data.langs, strict=True):
        for o in spec.objects:
            if lang == "en":
                assert o.color in text and o.shape in text
            else:
                assert shapes.COLORS_ZH[o.color] in text and shapes.SHAPES_ZH[o.shape] in text
                assert not any(ch.isascii() and ch.isalpha() for ch in text)


def test_rendered_objects_fill_their_boxes_inside_the_canvas():
    data = shapes.make_dataset(200)
    for image, spec in zip(data.images, data.specs, strict=True):
        for o in spec.objects:
            x0, y0, x1, y1 = o.bbox
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert min(x1 - x0, y1 - y0) >= 16
            # The box's pixels of the object's color make up the mask of its shape.
            mask = shapes.shape_mask(o.shape, o.bbox)
            assert np.all(image[mask] == shapes.COLORS[o.color])
        if spec.kind == "count":
            boxes = [o.bbox for o in spec.objects]
            assert all(
                shapes._disjoint(a, b, 6) for i, a in enumerate(boxes) for b in boxes[i + 1 :]
            )


def test_spec_json_round_trip_and_clear_errors():
    spec = shapes.make_dataset(1).specs[0]
    assert shapes.SceneSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    bad = {
        **spec.to_json(),
        "objects": [{"color": "magenta", "shape": "circle", "bbox": [1, 1, 20, 20]}],
    }
    with pytest.raises(ValueError, match="magenta"):
        shapes.SceneSpec.from_json(bad)


def test_build_writes_files_the_data_sources_read(tmp_path):
    out = str(tmp_path / "demo")
    assert build.main([f"--out={out}", "--num_train=12", "--num_eval_scenes=3"]) == 0
    examples = list(sources.iter_jsonl(os.path.join(out, build.TRAIN_FILE)))
    data = shapes.make_dataset(12)
    assert [e.caption for e in examples] == data.captions
    assert [e.lang for e in examples] == data.langs
    assert not any(e.error for e in examples)
    for e, image in zip(examples, data.images, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(e.image).convert("RGB")), image)
    prompts = shapes.load_prompts(os.path.join(out, build.EVAL_FILE))
    assert [p["lang"] for p in prompts] == ["en", "zh"] * 3
    assert prompts[0]["spec"] == prompts[1]["spec"]


def test_load_prompts_names_the_bad_line(tmp_path):
    path = tmp_path / "p.jsonl"
    good = json.dumps(shapes.eval_prompts(1)[0])
    path.write_text(good + "\n" + '{"caption": "x", "spec": {"kind": "blob"}}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2"):
        shapes.load_prompts(str(path))


def test_training_kind_mix_changes_training_scenes_but_not_the_held_out_prompts(tmp_path):
    # The default mix draws the same scenes as before the mix could be chosen.
    default = shapes.make_dataset(50, seed=2)
    same = shapes.make_dataset(50, seed=2, kind_mix=dict(shapes.SCENE_KIND_PROBS))
    assert default.specs == same.specs and default.captions == same.captions
    heavy = shapes.make_dataset(300, kind_mix={"single": 1, "relation": 3})
    kinds = [s.kind for s in heavy.specs]
    assert "count" not in kinds and 0.65 < kinds.count("relation") / len(kinds) < 0.85
    assert not any(shapes.is_held_out(s) for s in heavy.specs)

    out = str(tmp_path / "demo")
    mix = "single=0.25,count=0.25,relation=0.5"
    assert (
        build.main([f"--out={out}", "--num_train=6", "--num_eval_scenes=3", f"--kind_mix={mix}"])
        == 0
    )
    info = json.loads(open(os.path.join(out, build.INFO_FILE)).read())
    assert info["kind_mix"] == {"single": 0.25, "count": 0.25, "relation": 0.5}
    prompts = shapes.load_prompts(os.path.join(out, build.EVAL_FILE))
    expected = [shapes.SceneSpec.from_json(p["spec"]) for p in shapes.eval_prompts(3)]
    assert [p["spec"] for p in prompts] == expected


@pytest.mark.parametrize(
    "mix, message",
    [
        ({"single": 1, "blob": 1}, r"unknown kinds \['blob'\]"),
        ({"single": -1, "relation": 2}, "must be >= 0"),
        ({"single": 0}, "not all 0"),
    ],
)
def test_bad_kind_mix_is_a_clear_error(mix, message):
    with pytest.raises(ValueError, match=message):
        shapes.check_kind_mix(mix)


def test_build_cli_rejects_a_malformed_kind_mix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build.main([f"--out={tmp_path}", "--num_train=1", "--kind_mix=single:1"])
    assert "--kind_mix: expected kind=weight" in capsys.readouterr().err


def test_build_in_worker_processes_writes_the_same_bytes(tmp_path, monkeypatch):
    """Scenes rendered by two processes, chunk by chunk, equal a one-process build."""
    monkeypatch.setattr(build, "CHUNK", 4)
    outs = {}
    for workers in (1, 2):
        out = str(tmp_path / f"w{workers}")
        build.build(out, 10, num_eval_scenes=1, workers=workers)
        names = sorted(os.listdir(os.path.join(out, build.IMAGE_DIR)))
        outs[workers] = [open(os.path.join(out, build.TRAIN_FILE), "rb").read()] + [
            open(os.path.join(out, build.IMAGE_DIR, n), "rb").read() for n in names
        ]
    assert len(outs[1]) == 11 and outs[1] == outs[2]
