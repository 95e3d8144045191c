"""The standard-network benches end to end on the shapes demo, with random networks.

``--bench=coco`` runs on a COCO-format captions file made from demo scenes, a reference
folder of their renderings, a tiny random FID Inception (the real topology, narrow) and a
tiny random CLIP folder; the sampler is replaced by a producer that renders the captioned
scene (the ``ImageProducer`` seam), so no model is trained. Generation is SIGKILLed after
two shards and resumed: only the missing shard is made, with the seed it would have had.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mars_jax import evaluate
from mars_jax.eval import clip, coco, fid_stats, inception
from mars_jax.sampling import options

SCENES = evaluate.load_eval_prompts(None, num_scenes=12, seed=3)
BY_CAPTION = {p["caption"]: p["spec"] for p in SCENES}
TINY_CLIP = clip.ClipConfig(
    vision=clip.TowerConfig(32, 2, 4, 64), text=clip.TowerConfig(32, 2, 4, 64),
    image_size=32, patch_size=8, context_length=24, vocab_size=514, embed_dim=16,
    eos_token_id=513,
)  # fmt: skip


def render_producer(calls):
    def produce(captions, seed):
        calls.append((list(captions), seed))
        return np.stack([evaluate.shapes.render(BY_CAPTION[c]) for c in captions])

    return produce


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_assets")
    scenes = sorted({p["id"].split("-")[0] for p in SCENES}, key=int)
    images, annotations = [], []
    (root / "ref").mkdir()
    for i, scene in enumerate(scenes):
        rows = [p for p in SCENES if p["id"].split("-")[0] == scene]
        name = f"COCO_val2014_{i:012d}.png"
        images.append({"id": 100 + i, "file_name": name})
        annotations += [
            {"id": 1000 + 10 * i + j, "image_id": 100 + i, "caption": r["caption"]}
            for j, r in enumerate(rows)
        ]
        Image.fromarray(evaluate.shapes.render(rows[0]["spec"])).save(root / "ref" / name)
    with open(root / "captions.json", "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations}, f, ensure_ascii=False)
    clip.write_random_folder(str(root / "clip"), TINY_CLIP, seed=1)
    clip.write_byte_vocab(str(root / "clip"))
    # Zero weights of the real shapes: the file passes the pre-generation check; the
    # forward uses the narrow random network of ``tiny_inception``.
    state = {}
    for name, cin, cout, (kh, kw), _, _ in inception.CONVS:
        state[f"{name}.conv.weight"] = np.zeros((cout, cin, kh, kw), np.float32)
        for k in ("weight", "bias", "running_mean", "running_var"):
            state[f"{name}.bn.{k}"] = np.ones(cout, np.float32)
    np.savez(root / "inception.npz", **state)
    (root / "run").mkdir()
    (root / "run" / "config.json").write_text("{}")
    return root


@pytest.fixture
def tiny_inception(monkeypatch):
    params = inception.init_params(seed=0, width=1 / 16)
    monkeypatch.setattr(inception, "load_params", lambda path: params)


def coco_argv(assets, out, num=10):
    return [
        "--bench=coco", f"--checkpoint={assets / 'run'}", f"--captions={assets / 'captions.json'}",
        f"--reference={assets / 'ref'}", f"--inception={assets / 'inception.npz'}",
        f"--clip={assets / 'clip'}", f"--num={num}", f"--out={out}", "--shard_size=4",
        "--seed=5", "--feature_batch=4", "--no_progress",
    ]  # fmt: skip


# The evaluator in a subprocess whose producer SIGKILLs the process on its third shard.
_KILLED_RUN = """
import os, signal, sys
import numpy as np
from mars_jax import evaluate

specs = {p["caption"]: p["spec"] for p in evaluate.load_eval_prompts(None, 12, 3)}
seeds = []

def produce(captions, seed):
    if len(seeds) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    seeds.append(seed)
    print("seed", seed, flush=True)
    return np.stack([evaluate.shapes.render(specs[c]) for c in captions])

evaluate.coco_producer = lambda args, scfg: (produce, {})
sys.exit(evaluate.main(sys.argv[1:]))
"""


def test_coco_bench_kill_and_resume(assets, tmp_path, monkeypatch, tiny_inception, capsys):
    out = tmp_path / "eval"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, *coco_argv(assets, out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [ln for ln in killed.stdout.splitlines() if ln.startswith("seed")] == [
        "seed 5",
        "seed 9",
    ]
    assert "generating 3 of 3 shards" in killed.stdout
    shards = sorted(os.listdir(out / "images"))
    assert shards == ["shard_00000.npz", "shard_00001.npz"]  # whole shards only
    # A kill inside a shard's write leaves only its temporary file: never read as a shard.
    (out / "images" / "shard_00002.npz.partial").write_bytes(b"half a shard")
    assert len(fid_stats.list_shards(str(out / "images"))) == 2

    calls = []
    good = render_producer(calls)
    monkeypatch.setattr(evaluate, "coco_producer", lambda args, scfg: (good, {"step": 0}))
    assert evaluate.main(coco_argv(assets, out)) == 0
    assert [(len(c), seed) for c, seed in calls] == [(2, 13)]  # only the last shard (rows 8-9)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("fid=") and " clip_score=" in lines[-1]
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 10 and report["image_size_hw"] == [64, 64]
    assert report["run"] == {"step": 0}
    assert np.isfinite(report["fid"]) and 0 <= report["clip_score"] <= 100
    assert report["settings"]["caption_seed"] == 0 and report["settings"]["sampling_seed"] == 5
    assert set(report["settings"]["sampling"]) == set(options.RUN_OPTIONS)
    assert len(report["networks"]["clip"]["sha256"]) == 64
    assert len(report["networks"]["inception"]["sha256"]) == 64
    plan = json.loads((out / "plan.json").read_text())
    assert len({r["image_id"] for r in plan["rows"]}) == 10  # one caption per image
    generated = coco.read_shard_images(str(out))
    want = [evaluate.shapes.render(BY_CAPTION[r["caption"]]) for r in plan["rows"]]
    np.testing.assert_array_equal(generated, np.stack(want))

    # Everything done: a rerun only scores (same numbers, reference stats from the cache).
    calls.clear()
    assert evaluate.main(coco_argv(assets, out)) == 0
    assert calls == []
    again = json.loads((out / "report.json").read_text())
    assert again["fid"] == pytest.approx(report["fid"], rel=1e-6)
    assert again["reference"]["cached_stats"].endswith("reference_stats.npz")
    # Other settings on the same --out are refused before anything runs.
    assert evaluate.main(coco_argv(assets, out, num=8)) == 2
    assert "other settings (num, rows)" in capsys.readouterr().err


def test_caption_draw_is_seeded_one_per_image(assets):
    a = coco.draw_captions(str(assets / "captions.json"), 6, seed=1)
    b = coco.draw_captions(str(assets / "captions.json"), 6, seed=1)
    c = coco.draw_captions(str(assets / "captions.json"), 6, seed=2)
    assert a == b and a != c and len({r["image_id"] for r in a}) == 6
    with pytest.raises(ValueError, match="only 12"):
        coco.draw_captions(str(assets / "captions.json"), 13, seed=1)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--clip": "/nonexistent"}, "--clip=/nonexistent: no such folder"),
        ({"--inception": None}, "--inception=<pt_inception"),
        ({"--reference": "/nonexistent/val2014"}, "no such folder or .npz file"),
        ({"--num": "1"}, "at least 2"),
        ({"--checkpoint": "/tmp"}, "not a training run"),
    ],
)
def test_bad_flags_are_one_error_line_and_write_nothing(assets, tmp_path, capsys, change, message):
    argv = [a for a in coco_argv(assets, tmp_path / "out") if a.split("=")[0] not in change]
    argv += [f"{k}={v}" for k, v in change.items() if v is not None]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_fid_on_folders_with_demo_features_and_stats_files(assets, tmp_path, capsys):
    gen = tmp_path / "gen"
    gen.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        noisy = evaluate.shapes.render(SCENES[2 * i]["spec"]).astype(int)
        noisy[rng.random(noisy.shape[:2]) < 0.3] = 255
        Image.fromarray(noisy.astype(np.uint8)).save(gen / f"{i}.png")
    stats = tmp_path / "gen_stats.npz"
    base = [f"--images={gen}", "--extractor=palette", "--no_progress"]
    argv = ["--bench=fid", *base, f"--reference={assets / 'ref'}", f"--save_stats={stats}"]
    assert evaluate.main(argv) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert first.startswith("fid=") and float(first[4:]) > 0
    # The saved statistics as the reference of the reference folder: the same distance.
    argv = ["--bench=fid", f"--images={assets / 'ref'}", *base[1:], f"--reference={stats}"]
    assert evaluate.main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == first
    mu, sigma = fid_stats.load_stats(str(stats))
    assert mu.shape == (11,) and sigma.shape == (11, 11)
    # Without a network or an explicit extractor: an error, not demo features.
    assert evaluate.main(["--bench=fid", f"--images={gen}", f"--reference={stats}"]) == 2
    assert "needs --inception" in capsys.readouterr().err


def test_clipscore_bench(assets, tmp_path, capsys):
    rows = [p for p in SCENES if p["lang"] == "en"][:4]
    for i, r in enumerate(rows):
        Image.fromarray(evaluate.shapes.render(r["spec"])).save(tmp_path / f"{i}.png")
    with open(tmp_path / "c.jsonl", "w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"image": f"{i}.png", "caption": r["caption"]}) + "\n")
    argv = [
        "--bench=clipscore", f"--images={tmp_path}", f"--captions={tmp_path / 'c.jsonl'}",
        f"--clip={assets / 'clip'}", "--no_progress",
    ]  # fmt: skip
    assert evaluate.main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    model = clip.load_clip(str(assets / "clip"))
    images = [np.asarray(Image.open(tmp_path / f"{i}.png")) for i in range(4)]
    want = evaluate.fid.clip_score(
        model.image_features(images), model.text_features([r["caption"] for r in rows])
    )
    assert line == f"clip_score={want:.4f}"
    (tmp_path / "c.jsonl").write_text('{"image": "missing.png", "caption": "x"}\n')
    assert evaluate.main(argv) == 2
    assert "missing.png" in capsys.readouterr().err


def test_bad_weight_file_is_found_before_generation(assets, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "clip"
    bad.mkdir()
    for f in (assets / "clip").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    state = load_file(str(bad / "model.safetensors"))
    del state["text_model.encoder.layers.1.mlp.fc1.bias"]
    save_file(state, str(bad / "model.safetensors"))
    argv = [a for a in coco_argv(assets, tmp_path / "out") if not a.startswith("--clip=")]
    assert evaluate.main([*argv, f"--clip={bad}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "text_model.encoder.layers.1.mlp.fc1.bias" in err[0], err
    assert not (tmp_path / "out").exists()
