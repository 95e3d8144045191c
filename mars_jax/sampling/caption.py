"""Image → text: captioning in the stage-I `caption` format (paper §3.4), on the one decoder.

The prompt is `<img> codes <end>` (all vision tokens, one vision-expert prefill); the caption
is then decoded one token per `decoder.extend` from the frozen text head, over the text ids
up to `<|endoftext|>` (which ends it; the Qwen specials after it and the padding rows are
never drawn), or over those of one language (`text/languages.py`). Greedy at temperature 0,
else temperature / top-k / top-p sampling.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mars_jax.model import decoder, heads
from mars_jax.model.config import ModelConfig
from mars_jax.sampling import options
from mars_jax.sampling.options import SamplingConfig
from mars_jax.text import languages
from mars_jax.tokens import vocab


def prompt_tokens(codes_Bxhxw: np.ndarray) -> np.ndarray:
    """`<img> codes <end>` rows `[B, h*w + 2]`."""
    codes = np.asarray(codes_Bxhxw).reshape(len(codes_Bxhxw), -1)
    b = codes.shape[0]
    return np.concatenate(
        [
            np.full((b, 1), vocab.IMAGE_START),
            vocab.code_to_token(codes),
            np.full((b, 1), vocab.IMAGE_END),
        ],
        axis=1,
    ).astype(np.int32)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("ids", "allowed", "tied_allowed", "log_count"),
    meta_fields=(),
)
@dataclasses.dataclass(frozen=True)
class TiedHead:
    """A head whose columns outside `ids` are one shared column (the demo LLM's tied head,
    `cfg.text_head_ids`): a caption token is drawn from `ids` and one merged column for the
    tied ids, weighted by how many of them the language allows, then the merged column's
    draw becomes a uniform pick among those ids. The same distribution as the 151,936-way
    softmax (top-k and top-p count the tied ids as one column), at the cost of `len(ids) + 1`
    columns a step instead of 151,936."""

    ids: np.ndarray  # [n] sorted distinct ids, then the shared column's id
    allowed: np.ndarray  # [n + 1] bool: which columns the language allows
    tied_allowed: np.ndarray  # [m] the allowed ids the shared column stands for (m >= 1)
    log_count: float  # log m, or -inf when m = 0


def tied_head(cfg: ModelConfig, allowed_V: np.ndarray) -> TiedHead | None:
    """`TiedHead` of `cfg.text_head_ids` for the ids `allowed_V` marks; None: untied head."""
    if not cfg.text_head_ids:
        return None
    ids = np.asarray(sorted(int(i) for i in cfg.text_head_ids), np.int32)
    distinct = np.zeros(vocab.TEXT_VOCAB_SIZE, bool)
    distinct[ids] = True
    tied = np.flatnonzero(np.asarray(allowed_V) & ~distinct).astype(np.int32)
    return TiedHead(
        ids=np.append(ids, heads.tied_text_id(cfg)).astype(np.int32),
        allowed=np.append(np.asarray(allowed_V)[ids], tied.size > 0),
        tied_allowed=tied if tied.size else np.zeros(1, np.int32),
        log_count=float(np.log(tied.size)) if tied.size else -np.inf,
    )


def _tied_logits_and_pick(weights, cfg, scfg, tied: TiedHead):
    """(masked `[B, n + 1]` logits, `pick(columns_B, keys_B) -> ids_B`) of a `TiedHead`."""
    tied_ids, tied_allowed, log_count = tied.ids, tied.tied_allowed, tied.log_count
    head = jnp.take(weights.frozen["text_head"], tied_ids, axis=1)

    def logits(h_BxD):
        dtype = jnp.dtype(weights.compute_dtype)
        out = jnp.dot(h_BxD.astype(dtype), head.astype(dtype), preferred_element_type=jnp.float32)
        # The merged column holds m ids: after division by the temperature its weight is m
        # times one id's (greedy compares single ids).
        out = out.at[:, -1].add(scfg.temperature * log_count)
        return jnp.where(tied.allowed, out, -jnp.inf)

    def pick(columns_B, keys_B):
        n = tied_ids.shape[0] - 1
        spread = jax.vmap(lambda key: jax.random.randint(key, (), 0, tied_allowed.shape[0]))(keys_B)
        merged = tied_allowed[0] if scfg.temperature == 0.0 else tied_allowed[spread]
        return jnp.where(columns_B < n, tied_ids[jnp.minimum(columns_B, n - 1)], merged)

    return logits, pick


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "max_tokens", "copies"))
def caption_ids(
    weights: decoder.DecodeWeights,
    prompt_BxP: jax.Array,
    keys_B: jax.Array,
    allowed_V: jax.Array,
    *,
    cfg: ModelConfig,
    scfg: SamplingConfig,
    max_tokens: int,
    tied: TiedHead | None = None,
    copies: int = 1,
) -> jax.Array:
    """Caption token ids `[B * copies, max_tokens]` drawn from the ids `allowed_V` marks
    (`[151936]` bool); after a row's `<|endoftext|>` it repeats it. `tied`: draw from that
    `TiedHead`'s columns instead. `keys_B`: each row's key (`options.row_keys`); its token
    `i` is drawn from `fold_in(key, i)`, whatever the rest of the batch holds. `copies`:
    rows drawn from each prompt (consecutive, one key each); the prompt is read once and
    its cache copied, since reading the image is most of a short caption's cost."""
    u, p = prompt_BxP.shape
    b = u * copies
    cache = decoder.init_cache(cfg, u, p + max_tokens, weights.compute_dtype)
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (u, p))
    h, cache = decoder.extend(
        weights, cache, prompt_BxP, positions, jnp.ones((u, p), bool), 0, cfg, "vision"
    )
    h_BxD = h[:, -1]  # the prompt's last position: what the first token is drawn from
    if copies > 1:
        h_BxD, cache = jax.tree.map(lambda x: jnp.repeat(x, copies, axis=0), (h_BxD, cache))
    if tied is None:

        def logits(h_BxD):
            return jnp.where(allowed_V, decoder.text_logits(weights, h_BxD, cfg), -jnp.inf)

        def pick(ids_B, keys_B):
            return ids_B

    else:
        logits, pick = _tied_logits_and_pick(weights, cfg, scfg, tied)

    def step(carry):
        h_BxD, cache, i, done_B, tokens_BxT = carry
        step_keys_B = options.at_step(keys_B, 2 * i)
        drawn_B = options.choose_rows(logits(h_BxD), step_keys_B, scfg)
        drawn = pick(drawn_B, options.at_step(keys_B, 2 * i + 1))
        token_B = jnp.where(done_B, vocab.ENDOFTEXT, drawn)
        h, cache = decoder.extend(
            weights, cache, token_B[:, None], jnp.full((b, 1), p + i, jnp.int32),
            jnp.ones((b, 1), bool), p + i, cfg, "text",
        )  # fmt: skip
        tokens_BxT = jax.lax.dynamic_update_slice(tokens_BxT, token_B[:, None], (0, i))
        return h[:, -1], cache, i + 1, done_B | (token_B == vocab.ENDOFTEXT), tokens_BxT

    def writing(carry):
        _, _, i, done_B, _ = carry
        return (i < max_tokens) & ~jnp.all(done_B)

    # Captions are far shorter than `max_tokens`: stop once every row has ended (the rest
    # of each row is `<|endoftext|>`, as if the loop had run on).
    tokens_BxT = jnp.full((b, max_tokens), vocab.ENDOFTEXT, jnp.int32)
    start = (h_BxD, cache, jnp.int32(0), jnp.zeros((b,), bool), tokens_BxT)
    return jax.lax.while_loop(writing, step, start)[-1]


def caption_codes(
    frozen: dict | decoder.DecodeWeights,
    trainable: dict | None,
    cfg: ModelConfig,
    codes_Bxhxw: np.ndarray,
    scfg: SamplingConfig,
    max_tokens: int = 64,
    seed: int = 0,
    lang: str = languages.ANY,
    tied: bool = True,
    row_ids: np.ndarray | None = None,
    copies: int = 1,
) -> list[list[int]]:
    """Caption ids of each image (VQ codes `[B, h, w]`), without `<|endoftext|>`, in `lang`
    (`en`, `zh`, or `any`: the model's choice); `copies` of them per image (consecutive).
    `row_ids` `[B * copies, 2]`: each row's image index and candidate number
    (`options.row_keys`; default: images `0 … B-1`, candidate 0)."""
    allowed_V = languages.allowed_text_ids(lang)
    cfg.check_image_grid(tuple(np.shape(codes_Bxhxw)[1:]), "captioning")
    if isinstance(frozen, decoder.DecodeWeights):
        weights = frozen
    else:
        weights = decoder.prepare(frozen, trainable, cfg, None, str(cfg.compute_dtype))
    head = tied_head(cfg, allowed_V) if tied else None
    ids = caption_ids(
        weights, jnp.asarray(prompt_tokens(codes_Bxhxw)),
        options.call_keys(seed, len(codes_Bxhxw) * copies, row_ids),
        jnp.asarray(allowed_V), cfg=cfg, scfg=scfg, max_tokens=int(max_tokens), tied=head,
        copies=int(copies),
    )  # fmt: skip
    out = []
    for row in np.asarray(ids).tolist():
        out.append(row[: row.index(vocab.ENDOFTEXT)] if vocab.ENDOFTEXT in row else row)
    return out
