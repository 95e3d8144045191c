"""What a prepared data set's `manifest.json` tells its users: the VQ tokenizer it was
encoded with, the code grids of its buckets, and (stage III) its low- and high-res sizes."""

from __future__ import annotations

from mars_jax.data.pipeline import load_manifest

__all__ = ["default_grid", "grids", "load_manifest", "sr_sizes", "vq_dir"]


def vq_dir(manifest: dict) -> str:
    """The VQ tokenizer directory the shards were encoded with ('' if not recorded)."""
    return str((manifest.get("vq") or {}).get("dir", ""))


def grids(manifest: dict) -> list[tuple[int, int]]:
    """The code grids `(h, w)` of the buckets, sorted (stage III: the high-res grids)."""
    return sorted({tuple(int(x) for x in b["grid"]) for b in manifest["buckets"].values()})


def sr_sizes(manifest: dict) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """`((lo_h, lo_w), (hi_h, hi_w))` image sizes of the stage-III buckets, sorted."""
    return sorted(
        {
            (tuple(int(x) for x in b["lo_image_hw"]), tuple(int(x) for x in b["image_hw"]))
            for b in manifest["buckets"].values()
            if b.get("lo_image_hw")
        }
    )


def default_grid(vq_cfg) -> tuple[int, int]:
    """The square grid of a VQ tokenizer's training resolution (runs without a manifest)."""
    side = vq_cfg.resolution // vq_cfg.downsample_factor
    return (side, side)
