"""mars_jax: a JAX/Flax trainer and sampler for MARS (autoregressive text-to-image)."""

__version__ = "0.1.0"
