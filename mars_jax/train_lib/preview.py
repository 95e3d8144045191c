"""Images for a few fixed prompts, sampled during training (`config.sample`).

Every `sample.every_steps` steps (and at the end of the run) the trainer calls
`Previewer.__call__`, which samples one image per prompt with the current trainable params,
writes `samples/step_<N>/` (PNGs, prompts.txt, contact_sheet.png) into the workdir (its
local log mirror for a remote workdir) and adds
the contact sheet to TensorBoard. Only process 0 writes; every process runs the sampler
because the params are sharded across all of them.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections

from mars_jax import outputs
from mars_jax.data import manifest as manifest_lib
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import images as images_lib
from mars_jax.sampling import options, t2i
from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.vq import images as vq_images
from mars_jax.vq.checkpoint import load_vq


def _vq_and_grid(config: ml_collections.ConfigDict):
    """The run's VQ tokenizer and first code grid, from the shards' manifest."""
    vq_dir, grid = config.sample.vq, None
    if config.data.shards:
        manifest = manifest_lib.load_manifest(config.data.shards)
        vq_dir = vq_dir or manifest_lib.vq_dir(manifest)
        grid = manifest_lib.grids(manifest)[0]
    if not vq_dir:
        return None, None, None
    vq_cfg, vq_params = load_vq(vq_dir)
    return vq_cfg, vq_params, grid or manifest_lib.default_grid(vq_cfg)


class Previewer:
    """Samples `config.sample.prompts` with the live params; a no-op without prompts or VQ."""

    def __init__(self, config: ml_collections.ConfigDict, model_cfg: ModelConfig):
        self.prompts = [str(p) for p in config.sample.prompts]
        self.every = int(config.sample.every_steps)
        self.model_cfg = model_cfg
        self.text_len = int(config.data.text_len)
        self.scfg = options.SamplingConfig(**options.run_options(config.sample))
        self.seed = int(config.sample.seed)
        self.enabled = bool(self.prompts) and self.every > 0
        if self.enabled:
            self.vq_cfg, self.vq_params, self.grid = _vq_and_grid(config)
            self.enabled = self.vq_cfg is not None
        if self.enabled:  # the prompts as the stage trains on them (stage II/III: resolution)
            factor = self.vq_cfg.downsample_factor
            texts = images_lib.prompt_texts(self.prompts, self.grid, factor, config.stage >= 2)
            self.ids = [load_tokenizer().encode(p) for p in texts]
            self.scfg = dataclasses.replace(self.scfg, codebook_size=self.vq_cfg.codebook_size)

    def due(self, step: int, last_step: int) -> bool:
        return self.enabled and (step % self.every == 0 or step == last_step)

    def __call__(self, step: int, frozen: dict, trainable: dict, writer) -> str | None:
        """Sample, then (process 0) write `samples/step_<N>/` and a TensorBoard image."""
        codes = t2i.generate_codes(
            frozen, trainable, self.model_cfg, self.ids, self.text_len, self.grid, self.scfg,
            self.seed,
        )  # fmt: skip
        images = vq_images.decode_uint8(self.vq_params, self.vq_cfg, codes)
        if jax.process_index() != 0:
            return None
        out_dir = os.path.join(os.fspath(writer.dirs.local), "samples", f"step_{step:07d}")
        sheet = outputs.save_samples(out_dir, self.prompts, images)
        scale = outputs.sheet_scale(images.shape[1])
        writer.image("samples", outputs.contact_sheet(images, scale=scale), step)
        return sheet
