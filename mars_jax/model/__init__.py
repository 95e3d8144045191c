"""MARS model core: Qwen decoder with SemVIE visual experts, dual heads, chunked loss."""

from mars_jax.model.config import ModelConfig

__all__ = ["ModelConfig"]
