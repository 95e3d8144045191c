"""Pixel checker: ≈100 % on rendered and on blurred scenes; low on noise, blank, wrong specs."""

import numpy as np

from mars_jax.demo import checker, shapes

DATA = shapes.make_dataset(120, seed=5)


def _accuracies(images, specs):
    return checker.accuracies([checker.check(im, s) for im, s in zip(images, specs, strict=True)])


def _blur(images):
    """2× down/up-sampling then a 3×3 box blur: softer edges than the demo VQ produces."""
    x = images.astype(np.float32)
    n = len(x)
    x = x.reshape(n, 32, 2, 32, 2, 3).mean((2, 4)).repeat(2, 1).repeat(2, 2)
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(p[:, i : i + 64, j : j + 64] for i in range(3) for j in range(3)) / 9


def test_perfect_on_rendered_scenes():
    acc = _accuracies(DATA.images, DATA.specs)
    assert set(acc) == set(checker.CHECKS)
    assert all(v == 1.0 for v in acc.values()), acc


def test_robust_to_blur():
    acc = _accuracies(_blur(DATA.images), DATA.specs)
    # This blur shrinks small dark circles into squarish cores; the shipped VQ keeps them round
    # (tests/test_demo_vq_asset.py checks its reconstructions).
    assert all(v >= 0.97 for k, v in acc.items() if k not in ("shape", "binding")), acc
    assert acc["shape"] >= 0.9 and acc["binding"] >= 0.9, acc


def test_low_on_noise_blank_and_wrong_specs():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, DATA.images.shape, dtype=np.uint8)
    blank = np.broadcast_to(np.uint8(shapes.BACKGROUND_RGB), DATA.images.shape)
    for images in (noise, blank):
        acc = _accuracies(images, DATA.specs)
        assert all(v <= 0.05 for v in acc.values()), acc
    wrong = _accuracies(DATA.images, DATA.specs[1:] + DATA.specs[:1])
    assert wrong["color"] < 0.3 and wrong["shape"] < 0.3, wrong


def _single(color, shape, bbox, position="top left"):
    return shapes.render(
        shapes.SceneSpec("single", (shapes.ObjectSpec(color, shape, bbox),), position=position)
    )


def test_each_check_catches_its_own_error():
    red_circle = shapes.ObjectSpec("red", "circle", (3, 3, 31, 31))
    spec = shapes.SceneSpec("single", (red_circle,), "large", "top left")
    assert all(v in (True, None) for v in checker.check(shapes.render(spec), spec).values())
    v = checker.check(_single("red", "circle", (33, 33, 61, 61), "bottom right"), spec)
    assert v["color"] and v["shape"] and not v["position"]
    v = checker.check(_single("red", "square", (3, 3, 31, 31)), spec)
    assert v["color"] and not v["shape"] and v["position"]
    v = checker.check(_single("red", "triangle", (3, 3, 31, 31)), spec)
    assert v["color"] and not v["shape"]
    assert checker.check(_single("red", "circle", (3, 3, 21, 21)), spec)["size"] is False
    assert checker.check(_single("blue", "circle", (3, 3, 31, 31)), spec)["color"] is False


def test_binding_fails_when_shapes_are_swapped():
    a = shapes.ObjectSpec("red", "circle", (2, 20, 20, 38))
    b = shapes.ObjectSpec("blue", "square", (40, 20, 58, 38))
    spec = shapes.SceneSpec("relation", (a, b), relation="left of")
    assert checker.check(shapes.render(spec), spec)["binding"]
    swapped = shapes.SceneSpec(
        "relation",
        (shapes.ObjectSpec("red", "square", a.bbox), shapes.ObjectSpec("blue", "circle", b.bbox)),
        relation="left of",
    )
    v = checker.check(shapes.render(swapped), spec)
    assert v["color"] and v["position"] and not v["binding"]
    right = shapes.SceneSpec("relation", (a, b), relation="right of")
    assert checker.check(shapes.render(spec), right)["position"] is False


def test_count_check():
    data = [(im, s) for im, s in zip(DATA.images, DATA.specs, strict=True) if s.kind == "count"]
    image, spec = data[0]
    fewer = shapes.SceneSpec("count", spec.objects[:-1]) if spec.count == 3 else spec
    more = shapes.SceneSpec("count", spec.objects[:1])
    assert checker.check(image, spec)["count"]
    assert checker.check(shapes.render(more), spec)["count"] is False
    if fewer is not spec:
        assert checker.check(shapes.render(fewer), spec)["count"] is False


def test_blank_images_are_those_without_any_object():
    # Every rendered scene (blurred too) has an object; background only is blank, also with
    # the few off-color pixels a VQ decode of a background-only code grid leaves.
    assert not any(checker.is_blank(im) for im in DATA.images)
    assert not any(checker.is_blank(im) for im in _blur(DATA.images))
    background = np.zeros((64, 64, 3), np.uint8) + np.uint8(shapes.BACKGROUND_RGB)
    assert checker.is_blank(background)
    noisy = background.copy()
    noisy[0, :3] = (90, 90, 90)  # 3 stray pixels
    noisy[10:20, 10:20] += 20  # a faint patch, within the distance of the background
    assert checker.is_blank(noisy) and checker.object_pixels(noisy) == 3
    # The smallest object is not blank: a 16-px triangle, alone on the background.
    small = [s for s in DATA.specs if all(o.bbox[2] - o.bbox[0] == 16 for o in s.objects)]
    tri = next(s for s in small if s.objects[0].shape == "triangle")
    one = shapes.SceneSpec("single", tri.objects[:1], position="center")
    assert not checker.is_blank(shapes.render(one))
    assert checker.object_pixels(shapes.render(one)) >= checker.MIN_BLOB_AREA
