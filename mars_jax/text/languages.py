"""Which text ids may be drawn when a caption must be in one language (`caption --lang`).

The model decides the language of a free caption itself (the demo's captions come out in
Chinese almost always). Asking for a language restricts every drawn token: `en` keeps the
ids whose bytes are printable ASCII, `zh` the ids without a Latin letter (CJK, digits,
punctuation and the byte pieces of multi-byte characters). `<|endoftext|>` stays allowed, so
a caption can end; the Qwen specials after it are never drawn.
"""

from __future__ import annotations

import functools

import numpy as np

from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.tokens import vocab

LANGUAGES = ("en", "zh")
ANY = "any"


def _fits(piece: bytes, lang: str) -> bool:
    if lang == "en":
        return all(0x20 <= b < 0x7F for b in piece)
    return not any(chr(b).isascii() and chr(b).isalpha() for b in piece)


@functools.lru_cache(maxsize=4)
def allowed_text_ids(lang: str = ANY) -> np.ndarray:
    """`[151936]` bool: the text ids a caption in `lang` (`en`, `zh` or `any`) may draw."""
    if lang not in (*LANGUAGES, ANY):
        raise ValueError(f"unknown caption language {lang!r}; known: {(*LANGUAGES, ANY)}")
    allowed = np.arange(vocab.TEXT_VOCAB_SIZE) <= vocab.ENDOFTEXT
    if lang == ANY:
        return allowed
    tok = load_tokenizer()
    for i in range(vocab.ENDOFTEXT):
        allowed[i] = _fits(tok.token_bytes(i), lang)
    return allowed
