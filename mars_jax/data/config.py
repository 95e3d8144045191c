"""The ``config.data`` section: every knob of the input pipeline, per training stage.

``configs/stage{1,2,3}.py`` include ``default_data_config(stage)`` and override fields per
preset. Real batches come from prepared shards (``shards``); ``synthetic=True`` asks for random
but well-formed batches of the same format (trainer tests and benchmarks without data).
"""

from __future__ import annotations

import ml_collections

# Text slot lengths per stage: stage I alt-texts are short; stage II/III captions are
# refined (CogVLM-style, ~110 words) and carry the resolution prefix.
_TEXT_LEN = {1: 128, 2: 256, 3: 256}
_NUM_EPOCHS = {1: 1, 2: 2, 3: 1}  # paper §4.1


def default_data_config(stage: int) -> ml_collections.ConfigDict:
    """Defaults of ``config.data`` for training stage 1, 2 or 3 (see the field comments)."""
    if stage not in (1, 2, 3):
        raise ValueError(f"data config: stage must be 1, 2 or 3, got {stage!r}")
    c = ml_collections.ConfigDict()
    c.stage = stage
    # Directory written by `python -m mars_jax.data.prepare` (holds manifest.json).
    c.shards = ""
    # Fixed text slot length T (tokens). t2i/sr: left-padded; caption: right-padded, incl. <eot>.
    c.text_len = _TEXT_LEN[stage]
    # Stage I: fraction of each per-process batch that is captioning (image -> text).
    c.caption_ratio = 0.25 if stage == 1 else 0.0
    # Each task's per-process sub-batch is rounded to a multiple of this (set it to the
    # number of local devices the batch is sharded over, so every sub-batch splits evenly).
    c.task_batch_multiple = 1
    # Probability that a t2i / sr example gets an empty text slot (classifier-free guidance).
    c.caption_dropout = 0.1
    # Probability of training on the refined caption when a record has one.
    c.refined_caption_prob = 0.0 if stage == 1 else 1.0
    c.seed = 0
    c.num_epochs = _NUM_EPOCHS[stage]
    # Grain: 0 = read in the main process; >0 = that many worker processes (mp_prefetch).
    c.worker_count = 0
    c.worker_buffer_size = 2
    # Reader threads for ArrayRecord inside each worker.
    c.read_threads = 4
    # A record that cannot be read or decoded (garbled chunk, bad checksum): "skip" drops
    # and counts it (metric data/bad_records), "stop" ends the run naming the shard. More
    # than max_bad_records skipped in one process also ends it (0: no limit).
    c.on_bad_record = "skip"
    c.max_bad_records = 100
    # Synthetic batches (real ones take their grids from manifest.json; codes are drawn
    # from the model's `codebook_size`).
    c.synthetic = False
    # Code grids (h, w) of the synthetic buckets; stage III: the low-res grids.
    c.grids = ((16, 16),) if stage == 1 else ((16, 16), (16, 24), (24, 16))
    # Stage III synthetic: high-res grid = low-res grid * hires_scale (256 -> 1024: 4), or
    # the grids given here, one per low-res grid (aspect-keeping buckets).
    c.hires_scale = 4
    c.hires_grids = ()
    # The built-in demo: scenes built into `shards` on first use (0: not a demo run), the
    # VQ it encodes with (empty: the shipped one), its training mix of scene kinds.
    c.demo_scenes = 0
    c.demo_vq = ""
    c.demo_kind_mix = None
    return c
