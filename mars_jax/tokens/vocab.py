"""The single id space shared by text and image tokens (paper §3.3).

Text ids come first (the Qwen vocabulary padded to 151,936), then 8,192 VQ-GAN codes,
then 8 multimodal specials. Everything at or above ``TEXT_VOCAB_SIZE`` is processed by the
vision expert and predicted by the vision head; nothing else decides the expert.
"""

import numpy as np

TEXT_VOCAB_SIZE = 151_936  # Qwen BPE (151,643) + specials, padded.
NUM_IMAGE_CODES = 8_192
NUM_MM_SPECIALS = 8
VISION_VOCAB_SIZE = NUM_IMAGE_CODES + NUM_MM_SPECIALS  # rows of the vision embedding / head
VOCAB_SIZE = TEXT_VOCAB_SIZE + VISION_VOCAB_SIZE  # 160,136

FIRST_IMAGE_CODE = TEXT_VOCAB_SIZE
FIRST_MM_SPECIAL = TEXT_VOCAB_SIZE + NUM_IMAGE_CODES
IMAGE_START = FIRST_MM_SPECIAL + 0  # <img>
IMAGE_END = FIRST_MM_SPECIAL + 1  # <end>
ROW_END = FIRST_MM_SPECIAL + 2  # end of one row of codes (reserved for variable grids)
LOWRES_START = FIRST_MM_SPECIAL + 3  # <lo>
LOWRES_END = FIRST_MM_SPECIAL + 4  # </lo>

# Qwen specials used by the sequence formats.
ENDOFTEXT = 151_643  # <|endoftext|>: end of a caption (<eot>) and the text padding id.
PAD = ENDOFTEXT

assert VOCAB_SIZE == 160_136


def is_vision(token_ids):
    """True where a token is routed to the vision expert (works on numpy and jax arrays)."""
    return token_ids >= TEXT_VOCAB_SIZE


def is_image_opener(token_ids):
    """True at `<img>` and `<lo>`, the tokens that open a block of image codes."""
    return (token_ids == IMAGE_START) | (token_ids == LOWRES_START)


def code_to_token(codes):
    """VQ codebook index (0 … 8,191) → token id."""
    return codes + FIRST_IMAGE_CODE


def token_to_code(token_ids):
    """Token id → VQ codebook index; only meaningful where the id is an image code."""
    return token_ids - FIRST_IMAGE_CODE


def is_image_code(token_ids):
    return (token_ids >= FIRST_IMAGE_CODE) & (token_ids < FIRST_MM_SPECIAL)


def check_codes_in_range(codes: np.ndarray, codebook_size: int, where: str) -> None:
    """Raise a clear error if any VQ code lies outside ``[0, codebook_size)``."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(
            f"{where}: image codes out of range [0, {codebook_size}): "
            f"min {int(codes.min())}, max {int(codes.max())}"
        )
