"""Score a trained checkpoint on the built-in demo benchmarks, or on MS-COCO (FID, CLIP score).

    python -m mars_jax.evaluate --checkpoint=<workdir> --bench=shapes [--num_per_prompt=1]
        [--prompts=eval_prompts.jsonl] [--out=<dir>] [--check_candidates]
    python -m mars_jax.evaluate --checkpoint=<workdir> --bench=captions [--candidates=N]
        [--temperature=0] [--out=<dir>]
    python -m mars_jax.evaluate --checkpoint=<workdir> --bench=fid [--extractor=palette]
    python -m mars_jax.evaluate --checkpoint=<stage-III workdir> --bench=sr [--out=sheet.png]
    python -m mars_jax.evaluate --bench=fid --images=a/ --reference=b/|stats.npz --inception=w.pth
    python -m mars_jax.evaluate --bench=clipscore --images=a/ --captions=c.jsonl --clip=<folder>
    python -m mars_jax.evaluate --bench=coco --checkpoint=<run> --captions=captions_val2014.json
        --reference=val2014/ --inception=w.pth --clip=<folder> --num=30000 --out=eval/

The standard-network benches (``fid`` with ``--images``, ``clipscore``, ``coco``: FID with
pytorch-fid's Inception, CLIP score with OpenAI CLIP) are ``mars_jax.eval.runner``.

``shapes``: images are generated for the held-out prompts (``mars_jax.demo.shapes``: color ×
shape pairs never seen in training, English and Chinese captions of the same scenes) and
scored by the pixel checker. Per-language lines come first, then the other checks and
``shapes_blank_images=<n>`` (images with no object at all, ``checker.is_blank``); the last line is
``shapes_color_acc=<a> shapes_shape_acc=<b>`` over both languages. A contact sheet with the
verdicts and a JSON of every prompt's verdicts are written to ``--out``. With best of N
(``--candidates`` > 1) and ``--check_candidates``, every candidate is checked too:
``shapes_right_kept=<a> shapes_right_any_candidate=<b> shapes_right_mean_candidate=<c>
shapes_blank_candidates=<d>`` (the share of prompts whose kept image, whose best possible
pick, and whose average draw has its colors and shapes right: how much a better judge of
the candidates could gain; and the share of all draws that are blank, which best of N
passes over).

``captions``: held-out demo scenes are rendered, VQ-encoded and captioned in English and in
Chinese, as the ``caption`` command writes captions (greedy unless ``--temperature``,
``--top_k``, ``--top_p``; best of ``--candidates``, by default the run's
``sample.caption_candidates``); each caption is checked for the scene's colors, shapes,
count and relation. Per-language lines come first; the last line is
``captions_color_acc=<a> captions_shape_acc=<b>``.

``fid``: FID between generated images and the ground-truth renderings of the same prompts,
and CLIP score between generated images and their captions, both from the features of a
pluggable extractor (``mars_jax.eval.features``). The default ``palette`` extractor is a
weight-free demo stand-in; published FID / CLIP numbers need Inception / CLIP features.

``sr`` (``--checkpoint`` a stage-III run, e.g. ``runs/demo_stage3``): held-out demo scenes
(64 px ground truth) are downsampled to the run's low-res size and VQ-encoded; the stage-III
model's high-res codes (decoded) and bicubic upsampling of the low-res decode are scored
against the ground truth (PSNR, MSE, L1; all images and per caption language), in fast and
exact NKTP mode (``--nktp_mode``). ``--out`` writes a contact sheet (low-res | bicubic |
stage III | truth). The last line is ``sr_psnr=<a> bicubic_psnr=<b> ...``.

Generation is a seam: the library functions take an ``ImageProducer`` (captions, seed →
uint8 images); the CLI's one is ``sampling.images.generate_images`` on ``--checkpoint``
with the sampling flags (same names and defaults as ``mars_jax.generate``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mars_jax import cli, runs, sample_flags
from mars_jax.demo import checker, shapes
from mars_jax.eval import captions as caption_bench
from mars_jax.eval import features, fid, runner, sr
from mars_jax.sampling import images as images_lib
from mars_jax.sampling import options
from mars_jax.text.tokenizer import load_tokenizer

# (captions, seed) -> uint8 [len(captions), H, W, 3]
ImageProducer = Callable[[Sequence[str], int], np.ndarray]
# (captions, seed) -> (uint8 [len(captions), N, H, W, 3] every candidate, [len(captions)]
# index of the one kept)
CandidateProducer = Callable[[Sequence[str], int], tuple[np.ndarray, np.ndarray]]

SHEET_FILE = "shapes_contact_sheet.png"
VERDICTS_FILE = "shapes_verdicts.json"
_SHOWN_CHECKS = (("color", "C"), ("shape", "S"), ("position", "P"), ("count", "N"))


def _produce(produce: ImageProducer, captions: list[str], seed: int) -> np.ndarray:
    images = np.asarray(produce(captions, seed))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(captions):
        raise ValueError(
            f"image producer returned {images.dtype} {images.shape}; expected uint8 "
            f"[{len(captions)}, H, W, 3]"
        )
    return images


def generate_for_prompts(
    prompts: list[dict[str, Any]], produce: ImageProducer, num_per_prompt: int, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Every prompt ``num_per_prompt`` times (sample k uses seed ``seed + k``)."""
    captions = [p["caption"] for p in prompts]
    rows, images = [], []
    for k in range(num_per_prompt):
        images.append(_produce(produce, captions, seed + k))
        rows += [{**p, "sample": k} for p in prompts]
    return rows, np.concatenate(images)


def generate_candidates_for_prompts(
    prompts: list[dict[str, Any]], candidates: CandidateProducer, num_per_prompt: int, seed: int
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """As ``generate_for_prompts``, with every candidate: rows, kept images ``[R, H, W, 3]``,
    all candidates ``[R, N, H, W, 3]``."""
    captions = [p["caption"] for p in prompts]
    rows, kept, every = [], [], []
    for k in range(num_per_prompt):
        drawn, index = candidates(captions, seed + k)
        drawn, index = np.asarray(drawn), np.asarray(index)
        if drawn.dtype != np.uint8 or drawn.ndim != 5 or drawn.shape[0] != len(captions):
            raise ValueError(
                f"candidate producer returned {drawn.dtype} {drawn.shape}; expected uint8 "
                f"[{len(captions)}, N, H, W, 3]"
            )
        every.append(drawn)
        kept.append(drawn[np.arange(len(captions)), index])
        rows += [{**p, "sample": k, "kept": int(i)} for p, i in zip(prompts, index, strict=True)]
    return rows, np.concatenate(kept), np.concatenate(every)


def score_candidates(rows: list[dict[str, Any]], every: np.ndarray) -> dict[str, Any]:
    """Checker verdicts of every candidate ``[R][N]``, the share of prompts whose kept
    image, best possible pick and average candidate has its colors and shapes right, and
    the share of candidates that are blank."""
    verdicts = [
        [_verdict(im, r["spec"]) for im in images] for images, r in zip(every, rows, strict=True)
    ]
    right_RxN = np.array([[bool(v["color"] and v["shape"]) for v in row] for row in verdicts])
    kept = np.array([r["kept"] for r in rows])
    return {
        "verdicts": verdicts,
        "right_kept": float(right_RxN[np.arange(len(rows)), kept].mean()),
        "right_any_candidate": float(right_RxN.any(axis=1).mean()),
        "right_mean_candidate": float(right_RxN.mean()),
        "blank_candidates": float(np.mean([[v["blank"] for v in row] for row in verdicts])),
    }


def _verdict(image: np.ndarray, spec: shapes.SceneSpec) -> dict[str, bool | None]:
    """The checker's verdict on one image, with ``blank``: no object at all."""
    return {**checker.check(image, spec), "blank": checker.is_blank(image)}


def score_shapes(rows: list[dict[str, Any]], images: np.ndarray) -> dict[str, Any]:
    """Checker verdicts per row (with ``blank``: no object at all), and accuracies overall and
    per language, and the number of blank images."""
    verdicts = [_verdict(im, r["spec"]) for im, r in zip(images, rows, strict=True)]
    return summarize_verdicts(rows, verdicts)


def summarize_verdicts(rows: list[dict[str, Any]], verdicts: list[dict]) -> dict[str, Any]:
    """``score_shapes`` of verdicts already checked, one per row."""
    langs = sorted({r["lang"] for r in rows})
    per_lang = {
        lang: checker.accuracies(
            [v for v, r in zip(verdicts, rows, strict=True) if r["lang"] == lang]
        )
        for lang in langs
    }
    return {
        "verdicts": verdicts,
        "all": checker.accuracies(verdicts),
        "per_lang": per_lang,
        "blank": sum(v["blank"] for v in verdicts),
    }


def save_contact_sheet(path: str, images: np.ndarray, verdicts, columns: int = 8) -> None:
    """Images (×2) in a grid, each with its index and C/S/P/N marks (green pass, red fail)."""
    scale, bar = 2, 14
    h, w = images.shape[1] * scale, images.shape[2] * scale
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (w + 2), rows * (h + bar + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (image, verdict) in enumerate(zip(images, verdicts, strict=True)):
        x, y = (i % columns) * (w + 2), (i // columns) * (h + bar + 2)
        sheet.paste(Image.fromarray(image).resize((w, h), Image.NEAREST), (x, y))
        draw.text((x + 2, y + h + 1), str(i), fill=(0, 0, 0))
        for j, (name, mark) in enumerate(_SHOWN_CHECKS):
            ok = verdict.get(name)
            if ok is None:
                continue
            color = (0, 150, 0) if ok else (210, 0, 0)
            draw.text((x + w - 4 - 9 * (len(_SHOWN_CHECKS) - j), y + h + 1), mark, fill=color)
    sheet.save(path)


def _format(prefix: str, acc: dict[str, float], suffix: str = "") -> str:
    return " ".join(f"{prefix}_{k}_acc{suffix}={v:.4f}" for k, v in acc.items())


def evaluate_shapes(
    prompts: list[dict[str, Any]],
    produce: ImageProducer | None,
    num_per_prompt: int = 1,
    seed: int = 0,
    out_dir: str | None = None,
    log: Callable[[str], None] = print,
    candidates: CandidateProducer | None = None,
) -> dict[str, Any]:
    """Generate, check, print per-language lines then the summary line; returns the scores.

    With ``candidates`` instead of ``produce``, the kept images are scored as usual and
    every candidate is checked too (``result["candidates"]``, one more line)."""
    if candidates is not None:
        rows, images, every = generate_candidates_for_prompts(
            prompts, candidates, num_per_prompt, seed
        )
        checked = score_candidates(rows, every)
        kept_verdicts = [row[r["kept"]] for row, r in zip(checked["verdicts"], rows, strict=True)]
        result = summarize_verdicts(rows, kept_verdicts)  # each image checked once
        result["candidates"] = checked
    else:
        rows, images = generate_for_prompts(prompts, produce, num_per_prompt, seed)
        result = score_shapes(rows, images)
    for lang, acc in result["per_lang"].items():
        log(_format("shapes", acc, f"[{lang}]"))
    others = {k: v for k, v in result["all"].items() if k not in ("color", "shape")}
    log(_format("shapes", others))
    if candidates is not None:
        shares = {k: v for k, v in result["candidates"].items() if k != "verdicts"}
        log(" ".join(f"shapes_{k}={v:.4f}" for k, v in shares.items()))
    log(f"shapes_blank_images={result['blank']}")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        save_contact_sheet(os.path.join(out_dir, SHEET_FILE), images, result["verdicts"])
        records = [
            {"index": i, "id": r["id"], "caption": r["caption"], "lang": r["lang"], **v}
            for i, (r, v) in enumerate(zip(rows, result["verdicts"], strict=True))
        ]
        if candidates is not None:
            for record, r, every_verdict in zip(
                records, rows, result["candidates"]["verdicts"], strict=True
            ):
                record.update(kept=r["kept"], candidates=every_verdict)
        with open(os.path.join(out_dir, VERDICTS_FILE), "w", encoding="utf-8") as f:
            json.dump(
                {
                    "accuracy": result["all"],
                    "per_lang": result["per_lang"],
                    "blank_images": result["blank"],
                    "prompts": records,
                },
                f,
                ensure_ascii=False,
                indent=1,
            )
    acc = result["all"]
    log(f"shapes_color_acc={acc['color']:.4f} shapes_shape_acc={acc['shape']:.4f}")
    return result


def evaluate_fid(
    prompts: list[dict[str, Any]],
    produce: ImageProducer,
    extractor: features.FeatureExtractor,
    num_per_prompt: int = 1,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """FID (generated vs ground-truth renderings) and CLIP score (generated vs captions)."""
    rows, images = generate_for_prompts(prompts, produce, num_per_prompt, seed)
    reference = np.stack([shapes.render(r["spec"]) for r in rows])
    gen_feats = np.asarray(extractor.image_features(images))
    ref_feats = np.asarray(extractor.image_features(reference))
    text_feats = np.asarray(extractor.text_features([r["caption"] for r in rows]))
    scores = {
        "fid": fid.fid(gen_feats, ref_feats),
        "clip_score": fid.clip_score(gen_feats, text_feats),
    }
    log(f"reference_clip_score={fid.clip_score(ref_feats, text_feats):.4f}")
    log(f"fid={scores['fid']:.4f} clip_score={scores['clip_score']:.4f}")
    return scores


def sampler_producer(
    checkpoint: str,
    scfg_kwargs: dict[str, Any] | None = None,
    vq_dir: str | None = None,
    batch_size: int = 16,
    step: int | None = None,
    weights: str | None = None,
) -> ImageProducer:
    """The default seam: `sampling.images.generate_images` on a run, step or bundle."""
    run = runs.load_run(checkpoint, step, vq_dir=vq_dir, weights=weights)
    scfg = options.SamplingConfig(**(scfg_kwargs or {}))

    def produce(captions: Sequence[str], seed: int) -> np.ndarray:
        return images_lib.generate_images(run, list(captions), scfg, seed, batch_size=batch_size)

    return produce


def sampler_candidates(
    checkpoint: str,
    scfg_kwargs: dict[str, Any],
    vq_dir: str | None = None,
    batch_size: int = 16,
    step: int | None = None,
    weights: str | None = None,
) -> CandidateProducer:
    """Best of N on a run, with every candidate decoded (`sampling.images.draw_codes`)."""
    run = runs.load_run(checkpoint, step, vq_dir=vq_dir, weights=weights)
    scfg = options.SamplingConfig(**scfg_kwargs)

    def candidates(captions: Sequence[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
        drawn = images_lib.draw_codes(run, list(captions), scfg, seed, batch_size=batch_size)
        pixels = images_lib.candidate_images(run, drawn, batch_size)
        return pixels, drawn.kept_index

    return candidates


def load_eval_prompts(path: str | None, num_scenes: int, seed: int) -> list[dict[str, Any]]:
    """From an ``eval_prompts.jsonl`` if given, else the built-in held-out prompts."""
    if path:
        return shapes.load_prompts(path)
    return [
        {**p, "spec": shapes.SceneSpec.from_json(p["spec"])}
        for p in shapes.eval_prompts(num_scenes, seed)
    ]


def evaluate_sr(args: argparse.Namespace) -> int:
    """Stage-III images vs bicubic upsampling of the low-res decode, on held-out demo scenes.

    The low-res input is the ground truth downsampled to the run's low-res size and passed
    through the VQ; the methods are scored against the ground truth (PSNR, MSE, L1), over
    all images and per caption language (each scene captioned in English and in Chinese).
    `--nktp_mode=both` (the default) decodes in fast and in exact mode. With `--out`, a
    contact sheet (low-res | bicubic | stage III | ground truth) goes to `<out>/sr_sheet.png`
    (`--out` ending in `.png`: that file). The last line is `sr_psnr=<a> bicubic_psnr=<b>
    ...` (fast mode first; exact mode's as `sr_exact_psnr=`).
    """
    modes = sr.MODES if args.nktp_mode == "both" else (args.nktp_mode,)
    run = runs.load_run(args.checkpoint, args.step, vq_dir=args.vq, weights=args.weights)
    sizes = run.sr_sizes
    if not sizes:
        raise ValueError(f"--checkpoint={args.checkpoint}: not a stage-III run (no low-res sizes)")
    lo_hw, hi_hw = sizes[0]
    images, captions, langs = sr.demo_ground_truth(args.num_scenes, args.prompt_seed, ("en", "zh"))
    if images.shape[1:3] != tuple(hi_hw):
        raise ValueError(f"sr bench: demo scenes are {images.shape[1:3]}, the run makes {hi_hw}")
    tokenize = load_tokenizer().encode
    summary = {}
    for mode in modes:
        produce = sr.model_producer(
            run.frozen, run.trainable, run.model_cfg, run.vq_cfg, tokenize, run.text_len,
            k=args.nktp or None, mode=mode,
        )  # fmt: skip
        result = sr.run_sr_bench(
            produce, run.vq_cfg, run.vq_params, images, captions, lo_hw, seed=args.seed,
            batch_size=args.batch_size, langs=langs,
        )  # fmt: skip
        print("\n".join(sr.report_lines(result, prefix=f"[{mode}] ")[:-1]))
        name = "sr" if mode == modes[0] else f"sr_{mode}"
        summary.update({f"{name}_psnr": result["sr_psnr"], f"{name}_mse": result["sr_mse"]})
        if mode == modes[0]:
            base = result
            if args.out:
                path = (
                    args.out
                    if args.out.endswith(".png")
                    else os.path.join(args.out, "sr_sheet.png")
                )
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                en = np.asarray([x == "en" for x in langs])  # one row per scene
                shown = {**result, "images": {m: v[en] for m, v in result["images"].items()}}
                Image.fromarray(sr.contact_sheet(shown, images[en], num=8)).save(path)
                print(f"contact sheet (low-res | bicubic | stage III {mode} | truth): {path}")
    summary.update(
        bicubic_psnr=base["bicubic_psnr"], bicubic_mse=base["bicubic_mse"],
        vq_recon_psnr=base["vq_recon_psnr"],
    )  # fmt: skip
    order = ["sr_psnr", "bicubic_psnr"] + [
        k for k in summary if k not in ("sr_psnr", "bicubic_psnr")
    ]
    print(" ".join(f"{k}={summary[k]:.2f}" for k in order))
    return 0


def coco_producer(args: argparse.Namespace, scfg_kwargs: dict[str, Any]):
    """``--bench=coco``'s generator: ``sampler_producer``'s path at ``--resolution`` →
    (producer, run info for the report)."""
    import dataclasses

    run = runs.load_run(args.checkpoint, args.step, vq_dir=args.vq, weights=args.weights)
    scfg = options.SamplingConfig(**scfg_kwargs)

    def produce(captions: Sequence[str], seed: int) -> np.ndarray:
        return images_lib.generate_images(
            run, list(captions), scfg, seed, args.resolution, args.batch_size
        )

    return produce, {"step": run.step, "sampling": dataclasses.asdict(scfg)}


def _run_standard_bench(args: argparse.Namespace) -> int:
    """``fid`` on folders, ``clipscore``, ``coco`` (``mars_jax.eval.runner``)."""
    try:
        if args.bench == "coco" and args.checkpoint:
            try:
                runs.locate(args.checkpoint)  # a run, a step of one, or a bundle
            except (ValueError, OSError) as e:
                raise runner.UsageError(str(e)) from None
        runner.validate(args)
        if args.bench == "fid":
            runner.run_fid(args)
        elif args.bench == "clipscore":
            runner.run_clipscore(args)
        else:
            sample_flags.fill_sampling_args(args, args.checkpoint)
            scfg = sample_flags.sampling_kwargs(args)
            runner.run_coco(args, scfg, lambda: coco_producer(args, scfg))
    except runner.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


CAPTION_OPTIONS = (*sample_flags.CAPTION_DEFAULTS, "candidates")


def caption_sampling(args: argparse.Namespace) -> options.SamplingConfig:
    """How `--bench=captions` writes captions: as the `caption` command does
    (`sample_flags.caption_sampling`). The image-drawing options are an error here, not
    silently ignored."""
    image_only = [
        f"--{name}" for name in options.RUN_OPTIONS
        if name not in CAPTION_OPTIONS and getattr(args, name) is not None
    ]  # fmt: skip
    if image_only:
        raise cli.UsageError(
            f"{', '.join(image_only)}: options of drawing images; --bench=captions writes "
            f"captions (its options: {', '.join('--' + n for n in CAPTION_OPTIONS)})"
        )
    return sample_flags.caption_sampling(args)


def evaluate_captions(args: argparse.Namespace) -> int:
    """Image → text on held-out demo scenes (`eval/captions.py`): captions in English and in
    Chinese, greedy unless `--temperature` (with `--candidates` > 1, the best of it and more
    drawn ones, as the `caption` command), checked for the scene's colors, shapes, count
    and relation. With `--out`, the captions and verdicts go to `<out>/captions.jsonl`."""
    with cli.one_line_errors():
        sample_flags.fill_caption_candidates(args, args.checkpoint)
        scfg = caption_sampling(args)
    run = runs.load_run(args.checkpoint, args.step, vq_dir=args.vq, weights=args.weights)

    def captioner(images: np.ndarray, seed: int, lang: str) -> list[str]:
        return images_lib.caption_images(
            run, list(images), scfg, 48, seed, args.batch_size, lang=lang
        )

    result = caption_bench.run_caption_bench(
        captioner, args.num_scenes, args.prompt_seed, args.seed
    )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "captions.jsonl"), "w", encoding="utf-8") as f:
            for record in result["records"]:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print("\n".join(caption_bench.report_lines(result)))
    return 0


def build_parser() -> cli.Parser:
    """The command's flags (parsing only; `main` checks them against the run)."""
    p = cli.parser("evaluate", __doc__)
    p.add_argument(
        "--checkpoint", default=None, help="a training run, one of its steps, or a bundle"
    )
    p.add_argument(
        "--step", type=int, default=None, help="checkpoint step of a run (default: latest)"
    )
    p.add_argument(
        "--bench", required=True, choices=("shapes", "captions", "fid", "sr", "clipscore", "coco")
    )
    p.add_argument("--nktp", type=int, default=0, help="sr: codes per pass (0: the model's K)")
    p.add_argument(
        "--nktp_mode", default="both", choices=("fast", "exact", "both"),
        help="sr: parallel decoding mode(s)",
    )  # fmt: skip
    p.add_argument("--num_per_prompt", type=int, default=1)
    p.add_argument("--prompts", default=None, help="eval_prompts.jsonl (default: built-in)")
    p.add_argument(
        "--num_scenes", type=int, default=None,
        help="built-in held-out scenes, each captioned in both languages (default: 64 for "
        "shapes, where one sample per prompt is a noisy estimate; 32 for sr and fid)",
    )  # fmt: skip
    p.add_argument("--prompt_seed", type=int, default=0, help="seed of the built-in prompts")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", default=None, help="where the contact sheet and verdicts go")
    p.add_argument(
        "--check_candidates", action="store_true",
        help="shapes, best of N: check every candidate too (how often a right one was drawn)",
    )  # fmt: skip
    p.add_argument(
        "--extractor", default=None, help="palette | module:attribute (default: palette)"
    )
    sample_flags.add_sampling_args(p)  # unset: the run's own sample settings
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--vq", default=None, help="VQ tokenizer dir (default: the run's)")
    sample_flags.add_weights_arg(p)
    runner.add_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.bench in ("clipscore", "coco") or (args.bench == "fid" and args.images):
        return _run_standard_bench(args)
    if not args.checkpoint:
        p.error(f"--bench={args.bench} needs --checkpoint=<run | step | bundle>")
    with cli.one_line_errors():
        runs.locate(args.checkpoint, args.step)
        runs.check_weights(args.checkpoint, args.weights)
    if args.num_scenes is None:
        args.num_scenes = 64 if args.bench == "shapes" else 32

    if args.bench == "sr":
        return evaluate_sr(args)
    if args.bench == "captions":
        return evaluate_captions(args)
    with cli.one_line_errors():
        sample_flags.fill_sampling_args(args, args.checkpoint)
        sample_flags.sampling_config(args)  # bad values, before the model loads
        if args.check_candidates and (args.bench != "shapes" or args.candidates < 2):
            raise cli.UsageError(
                f"--check_candidates: checks the candidates of best of N on --bench=shapes, "
                f"but this is --bench={args.bench} with --candidates={args.candidates}"
            )
    prompts = load_eval_prompts(args.prompts, args.num_scenes, args.prompt_seed)
    scfg_kwargs = sample_flags.sampling_kwargs(args)
    loader = (args.checkpoint, scfg_kwargs, args.vq, args.batch_size, args.step, args.weights)
    if args.bench == "shapes":
        out = args.out or os.path.join(args.checkpoint, "eval_shapes")
        if args.check_candidates:
            candidates = sampler_candidates(*loader)
            evaluate_shapes(
                prompts, None, args.num_per_prompt, args.seed, out, candidates=candidates
            )
        else:
            evaluate_shapes(prompts, sampler_producer(*loader), args.num_per_prompt, args.seed, out)
    else:
        extractor = features.load_extractor(args.extractor or "palette")
        evaluate_fid(prompts, sampler_producer(*loader), extractor, args.num_per_prompt, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
