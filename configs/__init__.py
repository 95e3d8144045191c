"""Training configs: ``configs/stage{1,2,3}.py`` with presets ``qwen7b``, ``tiny``, ``demo``."""
