"""Text side of MARS: the Qwen-7B tokenizer."""

from mars_jax.text.tokenizer import QwenTokenizer, load_tokenizer

__all__ = ["QwenTokenizer", "load_tokenizer"]
