"""`ModelConfig`: the static description of a MARS model (Qwen decoder + SemVIE experts).

A frozen dataclass, hence hashable, so it can be a static argument of `jax.jit`. Configs
store it as a plain dict (`to_dict` / `from_dict`) in the `model` section of an
`ml_collections.ConfigDict`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mars_jax.tokens.vocab import NUM_IMAGE_CODES, TEXT_VOCAB_SIZE

REMAT_POLICIES = ("none", "full", "dots_saveable", "nothing_saveable", "dots_with_no_batch_dims")
IMAGE_LOGITS = ("full", "vision_only")
ATTENTION = ("reference", "blockwise", "auto")  # `attention.IMPLEMENTATIONS`
VISION_QUERY_INITS = ("copy", "zero")
VISION_EXPERT_INITS = ("copy", "random")
DTYPES = ("float32", "bfloat16", "float16")
# Per-layer groups of the frozen LLM that `ModelConfig.unfreeze` may name.
UNFREEZABLE = ("text_attn", "text_mlp", "o", "ln1", "ln2")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes, numerics and memory policy of the model.

    image_logits: "full" gives every position the 160,136-way softmax (paper §3.3);
      "vision_only" restricts positions whose target is a vision token (by the target's id
      in the general path, by the layout's segments in the static one) to the vision head's
      8,200 ids, skipping the 151,936-way text head there.
    loss_chunk_size: tokens per chunk of the cross-entropy; 0 computes it unchunked.
    scan_unroll: layers per iteration of the training forward's scan over layers. 1 compiles
      one layer body, whatever the depth (fast compiles, the paper's 28 layers); `num_layers`
      compiles the layers as straight-line code, which saves the loop's per-layer slicing of
      the stacked weights and the stacking of the backward pass's activations: the 4-layer
      CPU demo steps ~11 % faster (docs/RESULTS.md). Same results up to float rounding.
    nktp_k: tokens predicted per position in stage III (heads in `model/heads.py`); 1 = plain
      next-token prediction.
    codebook_size: codes of the VQ tokenizer (at most 8,192, the vocabulary's code range). The
      vision head computes logits for these codes and the specials only; the other code ids
      get the mask value, so a smaller VQ (the demo's 512 codes) skips most of the head.
    unfreeze: per-layer groups of the LLM that are trained after all, a deviation from MARS
      for LLMs too weak to condition on frozen (the demo's caption-sized "LLM"): any of
      `UNFREEZABLE`. Their trained copies live in the trainable tree (`params.py`); the
      frozen tree stays bit-identical. Empty (the paper): the LLM is frozen.
    image_pos_grid: `(rows, cols)` of the in-image position embedding, a deviation from MARS
      that the small demo model needs (README, "Demo"); `(0, 0)` (the paper): none. A learned
      row embedding and a learned column embedding are added to each image token, at the
      code's place in its image: its rotary position minus that of the latest `<img>` /
      `<lo>` (`mars.image_offsets`), split by `cols` into row and column. 1-D rotary
      positions are relative and do not give that place. Needs every image `cols` codes
      wide (high-res codes in stage III; low-res codes take their top-left child's place)
      and at most `rows` high (`check_image_grid`).
    vision_query_init: how the vision expert's query projection starts: "copy" of the text
      expert's (paper §3.3, like the rest of the expert) or "zero" (weights and bias), so
      every image token starts attending uniformly to the caption and the codes before it
      and reads the caption as a bag of words from the first step. A pretrained LLM's
      copied queries attend sharply along text patterns instead, and the demo model learned
      to ignore its prompts (docs/RESULTS.md).
    vision_expert_init: "copy": the vision expert (QKV, FFN) starts as a copy of the text
      expert (paper §3.3); "random": normal(0.02) like a fresh layer, for LLMs whose text
      attention and FFN are a poor start for image codes (docs/RESULTS.md).
    vision_mlp_dim: hidden size of the vision expert's FFN; 0 (the paper): `mlp_dim`, the
      text expert's. A narrower vision FFN is a deviation from SemVIE for budgets far too
      small for the LLM's layer size (the CPU demo): an image token then costs fewer FLOPs
      and a run fits more steps. Needs `vision_expert_init="random"` (a copy has the text
      FFN's shape).
    attention: implementation of attention (`model/attention.py`): "reference" materialises
      the `[B, heads, Lq, Lk]` scores; "blockwise" computes them a query block x key block
      tile at a time (online softmax, custom VJP), never holding more than one tile; "auto"
      is cuDNN's fused kernel on GPU in bf16/fp16 and "blockwise" elsewhere. Same results
      up to float rounding.
    text_head_ids: the text ids whose text-head columns may differ; the column of every
      other id is one shared column (that of `tied_text_id`). The shipped demo LLM has this
      form (its pretraining tied the ids its corpus never uses). The loss then computes the
      151,936-way text softmax exactly from `len(text_head_ids) + 1` columns, the shared
      logit counted once per tied id: a caption token costs ~1,000x less than through the
      full head. Loading a base whose head is not tied this way is an error; a random base
      is drawn tied. `()` (every real LLM): all columns are computed.
    """

    num_layers: int = 2
    width: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    mlp_dim: int = 128
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    compute_dtype: str = "bfloat16"
    frozen_dtype: str = "bfloat16"
    trainable_dtype: str = "float32"
    remat_policy: str = "none"
    scan_unroll: int = 1
    image_logits: str = "full"
    loss_chunk_size: int = 1024
    nktp_k: int = 1
    unfreeze: tuple[str, ...] = ()
    codebook_size: int = NUM_IMAGE_CODES
    image_pos_grid: tuple[int, int] = (0, 0)
    attention: str = "auto"
    vision_query_init: str = "copy"
    vision_expert_init: str = "copy"
    vision_mlp_dim: int = 0
    text_head_ids: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "unfreeze", tuple(self.unfreeze))
        object.__setattr__(self, "text_head_ids", tuple(int(i) for i in self.text_head_ids))
        object.__setattr__(self, "image_pos_grid", tuple(int(n) for n in self.image_pos_grid))

        def bad(key: str, why: str):
            raise ValueError(f"ModelConfig.{key}: {why}")

        for key in ("num_layers", "width", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
            if int(getattr(self, key)) <= 0:
                bad(key, f"must be positive, got {getattr(self, key)}")
        if self.num_heads % self.num_kv_heads:
            bad("num_kv_heads", f"{self.num_kv_heads} does not divide num_heads={self.num_heads}")
        if self.head_dim % 2:
            bad("head_dim", f"rotary embeddings need an even head_dim, got {self.head_dim}")
        for key in ("compute_dtype", "frozen_dtype", "trainable_dtype"):
            if getattr(self, key) not in DTYPES:
                bad(key, f"{getattr(self, key)!r} not in {DTYPES}")
        if self.remat_policy not in REMAT_POLICIES:
            bad("remat_policy", f"{self.remat_policy!r} not in {REMAT_POLICIES}")
        if self.scan_unroll < 1:
            bad(
                "scan_unroll",
                f"must be >= 1 (1: a rolled loop over layers), got {self.scan_unroll}",
            )
        if self.attention not in ATTENTION:
            bad("attention", f"{self.attention!r} not in {ATTENTION}")
        if self.vision_query_init not in VISION_QUERY_INITS:
            bad("vision_query_init", f"{self.vision_query_init!r} not in {VISION_QUERY_INITS}")
        if self.vision_expert_init not in VISION_EXPERT_INITS:
            bad("vision_expert_init", f"{self.vision_expert_init!r} not in {VISION_EXPERT_INITS}")
        if self.vision_mlp_dim < 0:
            bad("vision_mlp_dim", f"must be >= 0 (0: mlp_dim), got {self.vision_mlp_dim}")
        if self.vision_ffn_dim != self.mlp_dim and self.vision_expert_init == "copy":
            bad(
                "vision_mlp_dim",
                f"{self.vision_mlp_dim} differs from mlp_dim={self.mlp_dim}, so the vision "
                'expert cannot start as a copy of the text expert; set vision_expert_init="random"',
            )
        if self.image_logits not in IMAGE_LOGITS:
            bad("image_logits", f"{self.image_logits!r} not in {IMAGE_LOGITS}")
        if self.loss_chunk_size < 0:
            bad("loss_chunk_size", f"must be >= 0, got {self.loss_chunk_size}")
        if self.nktp_k < 1:
            bad("nktp_k", f"must be >= 1, got {self.nktp_k}")
        if not 0 < self.codebook_size <= NUM_IMAGE_CODES:
            bad("codebook_size", f"must be in (0, {NUM_IMAGE_CODES}], got {self.codebook_size}")
        grid = self.image_pos_grid
        if len(grid) != 2 or min(grid) < 0 or (0 in grid and grid != (0, 0)):
            bad("image_pos_grid", f"must be (rows, cols) > 0, or (0, 0) for none; got {grid}")
        ids = self.text_head_ids
        if ids and (
            list(ids) != sorted(set(ids))
            or ids[0] < 0
            or ids[-1] >= TEXT_VOCAB_SIZE
            or len(ids) >= TEXT_VOCAB_SIZE
        ):
            bad(
                "text_head_ids",
                f"must be increasing distinct ids in [0, {TEXT_VOCAB_SIZE}), not all of them; "
                f"got {len(ids)} ids from {ids[:4]}... to {ids[-1]}",
            )
        unknown = [name for name in self.unfreeze if name not in UNFREEZABLE]
        if unknown or len(set(self.unfreeze)) != len(self.unfreeze):
            bad("unfreeze", f"{list(self.unfreeze)}: names must be distinct, from {UNFREEZABLE}")

    @property
    def vision_ffn_dim(self) -> int:
        """Hidden size of the vision expert's FFN (`vision_mlp_dim`, 0: `mlp_dim`)."""
        return int(self.vision_mlp_dim) or int(self.mlp_dim)

    def check_image_grid(self, grid_hw: tuple[int, int], where: str) -> None:
        """Raise unless images of `grid_hw` codes fit `image_pos_grid` (when it is on)."""
        rows, cols = self.image_pos_grid
        h, w = (int(n) for n in grid_hw)
        if cols and (w != cols or h > rows):
            raise ValueError(
                f"{where}: a {h}x{w} code grid does not fit model.image_pos_grid=({rows}, {cols}) "
                f"(images must be {cols} codes wide and at most {rows} high)"
            )

    # ---- presets -------------------------------------------------------------------------

    @classmethod
    def qwen7b(cls, **overrides: Any) -> ModelConfig:
        """The paper's base LLM: Qwen-7B (FFN 11,008 per SwiGLU half, no GQA)."""
        base = dict(
            num_layers=32,
            width=4096,
            num_heads=32,
            num_kv_heads=32,
            head_dim=128,
            mlp_dim=11008,
            remat_policy="dots_saveable",
            loss_chunk_size=4096,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """Tests: two narrow layers with grouped-query attention."""
        base = dict(
            num_layers=2,
            width=64,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            mlp_dim=128,
            loss_chunk_size=256,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def demo(cls, **overrides: Any) -> ModelConfig:
        """CPU demo: trains in minutes on a laptop."""
        base = dict(
            num_layers=4,
            width=256,
            num_heads=4,
            num_kv_heads=4,
            head_dim=64,
            mlp_dim=688,
            loss_chunk_size=512,
        )
        return cls(**{**base, **overrides})

    # ---- (de)serialisation ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> ModelConfig:
        """Accepts a dict or an ml_collections ConfigDict; unknown keys are an error."""
        if hasattr(d, "to_dict"):
            d = d.to_dict()
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config: unknown keys {unknown}; known keys {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)
