"""Progress and metrics: tqdm bar, TensorBoard events, ``metrics.jsonl``, and MFU.

Only process 0 writes (``MetricsWriter(enabled=jax.process_index() == 0)``). With a remote
workdir (``gs://``) the logs are written locally and uploaded (``workdir.py`` says why).

MFU = model FLOPs per step / (step time × number of devices × peak FLOP/s per device).
Model FLOPs are counted by ``flops_per_sequence`` from the layout, without remat recompute
(the usual MFU convention: recomputation costs time but is not useful work).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from mars_jax.tokens import vocab
from mars_jax.train_lib import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
PEAK_FLOPS_BY_KIND = {
    "a100": 312e12,
    "h100": 989e12,
    "h200": 989e12,
    "h800": 989e12,
    "b200": 2250e12,
    "l4": 121e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,
    "tpu v6e": 918e12,
}
# Nominal CPU figure used for a sanity MFU on XLA:CPU: 50 GFLOP/s per core, shared by the
# emulated devices of the host. It is a convention, not a measured peak.
NOMINAL_CPU_FLOPS_PER_CORE = 50e9


def peak_flops_per_device(device_kind: str, platform: str, local_device_count: int) -> float | None:
    """Peak FLOP/s of one device by ``device.device_kind`` (longest matching name wins)."""
    kind = device_kind.lower()
    for name in sorted(PEAK_FLOPS_BY_KIND, key=len, reverse=True):
        if name in kind:
            return PEAK_FLOPS_BY_KIND[name]
    if platform == "cpu":
        return NOMINAL_CPU_FLOPS_PER_CORE * (os.cpu_count() or 1) / max(1, local_device_count)
    return None


def _cfg(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def flops_per_sequence(cfg: Any, layout: Sequence[tuple[str, int]], loss_segments: Sequence[int]):
    """Training FLOPs (forward + backward) of one sequence with this static layout.

    Notation: D width, H / KV query / key-value heads, Dh head dim, F MLP width, Ly layers,
    Vt = 151,936 text-head rows, Vv = 8,200 vision-head rows. Per layer and token:

        N_qkv = D·(H + 2·KV)·Dh   (text expert or vision expert, by the token's modality)
        N_o   = H·Dh·D            (shared, frozen)
        N_mlp = 3·D·F             (text expert or vision expert)

    A matmul with N weights costs 2·N FLOPs per token forward, 2·N for the gradient w.r.t. its
    input, and 2·N for the gradient w.r.t. its weights. So per token and layer:

        vision token (trainable expert):           6·(N_qkv + N_mlp) + 4·N_o
        text token that needs a backward pass:     4·(N_qkv + N_mlp + N_o)   (no weight grads)
        text token that needs none:                2·(N_qkv + N_mlp + N_o)   (forward only)

    A text token needs a backward pass only when it comes after a vision segment (it attends to
    keys that depend on trainable weights, e.g. captioning); the text prefix of text→image and
    super-resolution depends on frozen weights only and has no backward.

    Attention: each causal (query, key) pair costs 4·H·Dh forward (scores + weighted values);
    its backward costs 8·H·Dh when the query needs a backward pass.

    Heads, at the positions of the loss-bearing segments: the text head (D·Vt, frozen) costs
    2·D·Vt forward + 2·D·Vt input-grad; the vision head (D·Vv, trainable) 6·D·Vv. With
    ``cfg.image_logits == "vision_only"`` vision positions skip the text head.

    With ``cfg.unfreeze`` (trained copies of LLM groups), every text token needs a backward
    pass, and the unfrozen matmuls (text QKV, text MLP, O) add 2·N for their weight gradients
    on the tokens that use them.

    The vision expert's FFN is ``cfg.vision_mlp_dim`` wide when that is set.

    Embedding lookups, norms, rotary and softmax are not counted (small and not matmuls).
    """
    d = _cfg(cfg, "width")
    h = _cfg(cfg, "num_heads")
    kv = _cfg(cfg, "num_kv_heads") or h
    dh = _cfg(cfg, "head_dim") or d // h
    f = _cfg(cfg, "mlp_dim")
    layers = _cfg(cfg, "num_layers")
    vision_only = _cfg(cfg, "image_logits", "full") == "vision_only"
    n_qkv, n_o, n_mlp = d * (h + 2 * kv) * dh, h * dh * d, 3 * d * f
    n_vision_mlp = 3 * d * (_cfg(cfg, "vision_mlp_dim", 0) or f)  # `vision_mlp_dim`
    # The vision head computes the VQ's codes and the specials (`ModelConfig.codebook_size`).
    codebook = _cfg(cfg, "codebook_size", vocab.NUM_IMAGE_CODES) or vocab.NUM_IMAGE_CODES
    vision_rows = codebook + vocab.VISION_VOCAB_SIZE - vocab.NUM_IMAGE_CODES
    # A tied text head (`ModelConfig.text_head_ids`) is computed from its distinct columns.
    tied_ids = _cfg(cfg, "text_head_ids", ()) or ()
    text_columns = len(tied_ids) + 1 if tied_ids else vocab.TEXT_VOCAB_SIZE
    unfrozen = set(_cfg(cfg, "unfreeze", ()) or ())
    text_weight_grads = 2 * (
        n_qkv * ("text_attn" in unfrozen)
        + n_mlp * ("text_mlp" in unfrozen)
        + n_o * ("o" in unfrozen)
    )

    total = 0.0
    pos = 0
    seen_vision = False
    for index, (modality, length) in enumerate(layout):
        is_vis = modality == "vision"
        seen_vision = seen_vision or is_vis
        needs_bwd = is_vis or seen_vision or bool(unfrozen)
        if is_vis:
            per_tok = 6 * (n_qkv + n_vision_mlp) + (6 if "o" in unfrozen else 4) * n_o
        elif needs_bwd:
            per_tok = 4 * (n_qkv + n_mlp + n_o) + text_weight_grads
        else:
            per_tok = 2 * (n_qkv + n_mlp + n_o)
        # keys attended: all earlier positions plus the causal part of this segment.
        pairs = length * pos + length * (length + 1) / 2
        attn = pairs * (4 + (8 if needs_bwd else 0)) * h * dh
        total += layers * (length * per_tok + attn)
        if index in loss_segments:
            text_head = 0 if (is_vis and vision_only) else 4 * d * text_columns
            total += length * (text_head + 6 * d * vision_rows)
        pos += length
    return total


def loss_segments(layout: Sequence[tuple[str, int]]) -> tuple[int, ...]:
    """Index of the segment that carries the loss: the last one in every task format."""
    return (len(layout) - 1,)


def flops_per_step(cfg: Any, layouts: Mapping[str, Any], batch_sizes: Mapping[str, int]) -> float:
    """Model FLOPs of one optimizer step: sum over tasks of batch × per-sequence FLOPs."""
    total = 0.0
    for task, layout in layouts.items():
        segs = tuple((str(m), int(n)) for m, n in layout)
        total += batch_sizes[task] * flops_per_sequence(cfg, segs, loss_segments(segs))
    return total


class MetricsWriter:
    """JSONL + TensorBoard + tqdm, written by one process only.

    With a remote workdir, both logs are written under ``dirs.local`` and uploaded to the
    workdir every ``upload_every_s`` seconds and on ``close`` (see ``workdir.py``).
    """

    def __init__(
        self,
        workdir: str,
        total_steps: int,
        initial_step: int,
        enabled: bool,
        dirs: workdir_lib.LogDirs | None = None,
        upload_every_s: float = 300.0,
    ):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        self.dirs = workdir_lib.log_dirs(workdir) if dirs is None else dirs
        self._upload_every_s = upload_every_s
        self._last_upload = time.monotonic()
        self._bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True, unit="step")
        local = self.dirs.local
        local.mkdir(parents=True, exist_ok=True)
        if self.dirs.remote is not None:
            if workdir_lib.fetch_file(self.dirs.remote / METRICS_FILE, local / METRICS_FILE):
                self.print(f"resuming {self.dirs.remote / METRICS_FILE}")
            self.print(
                f"workdir {self.dirs.remote} is remote: metrics.jsonl and TensorBoard events "
                f"are written to {local} and uploaded there every {upload_every_s:.0f} s and "
                "at the end"
            )
        # A resumed run redoes the steps after its checkpoint: drop their old lines, and
        # have TensorBoard discard their old events (purge_step), so each step appears once.
        dropped = truncate_after(local / METRICS_FILE, initial_step)
        if dropped:
            self.print(
                f"{METRICS_FILE}: dropped {dropped} line(s) after step {initial_step} "
                "(redone from the checkpoint)"
            )
        self._jsonl = open(local / METRICS_FILE, "a", encoding="utf-8")
        self._tb = SummaryWriter(os.fspath(local / TENSORBOARD_DIR), purge_step=initial_step + 1)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, step)
        post = {"loss": f"{record.get('loss', float('nan')):.4f}"}
        if "tokens_per_s" in record:
            post["tok/s"] = f"{record['tokens_per_s']:.3g}"
        self._bar.set_postfix(post, refresh=False)
        if (
            self.dirs.remote is not None
            and time.monotonic() - self._last_upload >= self._upload_every_s
        ):
            self.upload()

    def upload(self) -> None:
        """Copy the local logs to a remote workdir (nothing to do for a local one)."""
        if not self.enabled or self.dirs.remote is None:
            return
        self._jsonl.flush()
        self._tb.flush()
        workdir_lib.upload_tree(self.dirs.local, self.dirs.remote)
        self._last_upload = time.monotonic()

    def image(self, tag: str, image_HxWx3, step: int) -> None:
        """An RGB uint8 image in TensorBoard (e.g. the contact sheet of sampled prompts)."""
        if self.enabled:
            self._tb.add_image(tag, image_HxWx3, global_step=step, dataformats="HWC")

    def advance(self, steps: int = 1) -> None:
        if self.enabled:
            self._bar.update(steps)

    def print(self, message: str) -> None:
        if self.enabled:
            self._bar.write(message)

    def close(self) -> None:
        if not self.enabled:
            return
        self._tb.flush()
        self._tb.close()
        self._jsonl.close()
        if self.dirs.remote is not None:
            workdir_lib.upload_tree(self.dirs.local, self.dirs.remote)
        self._bar.close()


def parse_records(lines: Iterable[str]) -> Iterator[tuple[int, str, dict | None]]:
    """``(line number, line, record)`` for each line of a ``metrics.jsonl``; the record is
    None where the line is not one (blank, or cut by a kill). The one parser of the log
    format: training truncates with it on resume, ``plot`` and ``export`` read with it."""
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            record["step"] = int(record["step"])
        except (ValueError, KeyError, TypeError, IndexError):
            record = None
        yield number, line, record


def last_record(lines: Iterable[str]) -> dict:
    """The last readable record of a ``metrics.jsonl`` ({} if none)."""
    last: dict = {}
    for _, _, record in parse_records(lines):
        last = record if record is not None else last
    return last


def truncate_after(path, step: int) -> int:
    """Drop the lines of ``path`` (metrics.jsonl) with a step after ``step`` (and unreadable
    ones, e.g. a line cut by a kill); rewrites atomically. Returns the number dropped."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for _, line, record in parse_records(f):
            if record is not None and record["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
