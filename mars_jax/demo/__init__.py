"""The built-in demo: synthetic bilingual shapes scenes, their pixel checker, the demo VQ.

- ``shapes``: deterministic scenes, English/Chinese captions, held-out combinations;
- ``checker``: pixel-based verdicts (color, shape, position, size, count, binding);
- ``build``: ``python -m mars_jax.demo.build`` writes PNGs + ``train.jsonl`` for ``prepare``;
- ``train_vq``: ``python -m mars_jax.demo.train_vq`` reproduces ``mars_jax/assets/demo_vq``.
"""
