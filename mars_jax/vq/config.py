"""VQ-GAN hyper-parameters as a frozen (hashable) dataclass, so it can be a static jit argument.

The layout is taming-transformers' ``Encoder``/``Decoder``: ``len(ch_mult)`` resolution levels,
each ``num_res_blocks`` ResNet blocks (the decoder has one more), self-attention after every
ResNet block of a level whose spatial size is in ``attn_resolutions``, and a mid block
(ResNet, attention, ResNet). Images are downsampled by ``2 ** (len(ch_mult) - 1)``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class VQConfig:
    in_channels: int = 3
    base_channels: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    mid_attention: bool = True
    z_channels: int = 256
    embed_dim: int = 256
    codebook_size: int = 8192
    resolution: int = 256
    norm_groups: int = 32
    # Encode each f×f patch on its own (f = the downsampling factor): a code then depends on
    # its patch's pixels alone, so identical patches (a flat background) get one code wherever
    # they lie. False: taming's encoder, whose receptive field spans neighbouring patches.
    patch_encoder: bool = False

    def __post_init__(self):
        # Normalise sequences (e.g. lists from JSON) so the config stays hashable.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        for c in self.level_channels:
            if c % self.norm_groups:
                raise ValueError(
                    f"VQConfig: every level's channels ({self.level_channels}) must be divisible "
                    f"by norm_groups={self.norm_groups}"
                )
        if self.resolution % self.downsample_factor:
            raise ValueError(
                f"VQConfig: resolution {self.resolution} is not a multiple of the "
                f"downsampling factor {self.downsample_factor}"
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.ch_mult)

    @property
    def latent_size(self) -> int:
        """Side of the code grid for a ``resolution``-sized square image."""
        return self.resolution // self.downsample_factor

    def level_resolution(self, level: int) -> int:
        return self.resolution // 2**level

    def has_attention(self, level: int) -> bool:
        return self.level_resolution(level) in self.attn_resolutions

    @classmethod
    def paper(cls) -> VQConfig:
        """f16, 8,192 codes: taming's ImageNet f16 architecture (256 px → 16×16 codes)."""
        return cls()

    @classmethod
    def demo(cls) -> VQConfig:
        """f8, 512 codes, 32–64 channels: 64×64 images → 8×8 codes, small enough for a CPU.

        One normalisation group: with 32 channels, 32 groups would normalise each channel on its
        own and erase the ratios between channels that carry colour.
        """
        return cls(
            base_channels=32,
            ch_mult=(1, 1, 2, 2),
            num_res_blocks=1,
            attn_resolutions=(),
            mid_attention=True,
            z_channels=32,
            embed_dim=32,
            codebook_size=512,
            resolution=64,
            norm_groups=1,
        )

    @classmethod
    def tiny(cls, codebook_size: int = 16) -> VQConfig:
        """Tests: f2, 16-px images, a few thousand parameters."""
        return cls(
            base_channels=32,
            ch_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(),
            z_channels=8,
            embed_dim=4,
            codebook_size=codebook_size,
            resolution=16,
        )

    @classmethod
    def preset(cls, name: str) -> VQConfig:
        presets = {"paper": cls.paper, "demo": cls.demo, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown VQ config preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        if not self.patch_encoder:
            del d["patch_encoder"]  # taming's encoder: the JSON (and identity) of earlier VQs
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> VQConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown VQConfig keys {unknown}; known keys {sorted(known)}"
            )
        return cls(**d)
