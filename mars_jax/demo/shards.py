"""Demo training data, built on first use: shapes scenes → PNG + jsonl → prepared shards.

The demo presets (`configs/stage*.py:demo`) leave `data.shards` empty and set `data.demo`;
the trainer then calls `ensure_demo_shards`, which writes the scenes with
`mars_jax.demo.build` and runs `mars_jax.data.prepare` with the VQ tokenizer shipped in
`mars_jax/assets/demo_vq`. Both steps resume and are no-ops when already complete, so
rerunning the demo command costs nothing here.
"""

from __future__ import annotations

import json
import os

from mars_jax.data import prepare
from mars_jax.demo import build, shapes
from mars_jax.vq import checkpoint

DEMO_VQ_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "demo_vq")


def demo_vq_dir() -> str:
    if not os.path.exists(os.path.join(DEMO_VQ_DIR, "vq_config.json")):
        raise FileNotFoundError(
            f"the demo VQ tokenizer is missing at {DEMO_VQ_DIR}; rebuild it with "
            "`python -m mars_jax.demo.train_vq --out=mars_jax/assets/demo_vq`"
        )
    return DEMO_VQ_DIR


def prepare_options(stage: int, source: str, out: str, vq_dir: str) -> prepare.PrepareOptions:
    """Sizes of the 64-px scenes: stage I/II 64 px (8×8 codes at f8); stage III 32 → 64 px."""
    side = shapes.IMAGE_SIZE
    low = side // 2 if stage == 3 else side
    return prepare.PrepareOptions(
        stage=stage,
        source=source,
        out=out,
        vq=vq_dir,
        min_side=low,
        image_size=side,
        short_side=low,
        hires_long_side=side,
        min_long_side=side,
        progress=True,
    )


def ensure_for_config(config) -> None:
    """Build a demo preset's shards on first use (`data.demo_scenes` > 0, real shards)."""
    data = config.data
    if not data.demo_scenes or data.synthetic:
        return
    ensure_demo_shards(
        data.shards, int(config.stage), int(data.demo_scenes), vq_dir=data.demo_vq,
        kind_mix=data.demo_kind_mix,
    )  # fmt: skip


def ensure_demo_shards(
    shards_dir: str,
    stage: int,
    num_train: int,
    seed: int = 0,
    vq_dir: str = "",
    kind_mix: dict[str, float] | None = None,
) -> str:
    """Prepared shards of `num_train` demo scenes at `shards_dir` (scenes beside it).

    `vq_dir`: another VQ tokenizer than the shipped one (e.g. one retrained by the user).
    `kind_mix`: weights of the training scene kinds (`shapes.check_kind_mix`).
    """
    kind_mix = shapes.check_kind_mix(kind_mix)
    manifest_file = os.path.join(shards_dir, "manifest.json")
    data_dir = scenes_dir(shards_dir)
    vq_dir = vq_dir or demo_vq_dir()
    if os.path.exists(manifest_file):
        check_scene_count(manifest_file, num_train)
        check_kind_mix(data_dir, kind_mix)
        check_vq(manifest_file, vq_dir)
        return shards_dir
    train_file = os.path.join(data_dir, build.TRAIN_FILE)
    if os.path.exists(train_file):
        check_kind_mix(data_dir, kind_mix)
    else:
        build.build(data_dir, num_train, seed=seed, kind_mix=kind_mix)
    manifest = prepare.run(prepare_options(stage, train_file, shards_dir, vq_dir))
    if manifest is None:
        raise RuntimeError(f"demo data: {shards_dir} is incomplete after prepare")
    return shards_dir


def check_scene_count(manifest_file: str, num_train: int) -> None:
    """Raise if existing demo shards hold another number of scenes than the config asks."""
    with open(manifest_file, encoding="utf-8") as f:
        seen = int(json.load(f)["counts"]["seen"])
    if seen != num_train:
        shards_dir = os.path.dirname(manifest_file)
        raise ValueError(
            f"data.demo_scenes={num_train}, but the demo shards at {shards_dir} hold {seen} "
            f"scenes; point data.shards at a new directory (or delete {shards_dir} and "
            f"{scenes_dir(shards_dir)}) to build {num_train}"
        )


def check_vq(manifest_file: str, vq_dir: str) -> None:
    """Raise if existing demo shards hold the codes of another VQ tokenizer than `vq_dir`'s
    (say, after an update that ships a new one): its decoder would misread them."""
    with open(manifest_file, encoding="utf-8") as f:
        encoded_by = json.load(f).get("vq", {}).get("identity")
    wanted = checkpoint.recorded_identity(vq_dir)
    if wanted is None:
        raise ValueError(
            f"data.demo_vq={vq_dir!r} holds no VQ checkpoint ({checkpoint.CONFIG_FILE})"
        )
    if encoded_by != wanted:
        shards_dir = os.path.dirname(manifest_file)
        raise ValueError(
            f"the demo shards at {shards_dir} hold the codes of VQ {encoded_by}, but the demo's "
            f"VQ tokenizer ({vq_dir}) is {wanted}; delete {shards_dir} to encode the scenes "
            "again, or point data.shards at a new directory"
        )


def check_kind_mix(data_dir: str, kind_mix: dict[str, float]) -> None:
    """Raise if the scenes in `data_dir` were drawn with another mix of kinds than asked.

    Scenes written before the mix was recorded used the default mix.
    """
    info_file = os.path.join(data_dir, build.INFO_FILE)
    built = dict(shapes.SCENE_KIND_PROBS)
    if os.path.exists(info_file):
        with open(info_file, encoding="utf-8") as f:
            built = json.load(f)["kind_mix"]
    if any(abs(built.get(k, 0.0) - v) > 1e-9 for k, v in kind_mix.items()):
        raise ValueError(
            f"data.demo_kind_mix={kind_mix}, but the demo scenes at {data_dir} were drawn with "
            f"{built}; point data.shards at a new directory (or delete it and {data_dir})"
        )


def scenes_dir(shards_dir: str) -> str:
    """Where the PNG scenes, train.jsonl and eval_prompts.jsonl of a demo data set live."""
    return shards_dir.rstrip("/") + "-scenes"


def load_eval_prompts(shards_dir: str) -> list[dict]:
    """The held-out prompts written beside the demo scenes."""
    path = os.path.join(scenes_dir(shards_dir), build.EVAL_FILE)
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
