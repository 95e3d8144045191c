"""VQ-GAN training objective: reconstruction + codebook + commitment (straight-through).

``loss = |x - x̂|₁ + l2_weight·|x - x̂|² + |sg(z) - z_q|² + beta·|z - sg(z_q)|²`` as in VQ-VAE /
taming (beta 0.25). The decoder sees ``z + sg(z_q - z)``, so reconstruction gradients pass to the
encoder unchanged while the codebook term alone moves the code vectors. A perceptual (LPIPS)
term is not implemented (it needs pretrained VGG weights); the optional adversarial term is
added by ``mars_jax.vq.train`` with ``mars_jax.vq.discriminator``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mars_jax.vq import model
from mars_jax.vq.config import VQConfig


def vq_loss(
    params: model.Params,
    cfg: VQConfig,
    images_NxHxWx3: jax.Array,
    beta: float = 0.25,
    l2_weight: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss and its parts; ``aux`` also holds ``codes`` [N, h, w] and ``recon`` images."""
    z = model.encode_latents(params, cfg, images_NxHxWx3)
    codes, z_q = model.quantize(params, cfg, z)
    z_st = z + jax.lax.stop_gradient(z_q - z)
    recon = model.decode_latents(params, cfg, z_st)
    err = recon - images_NxHxWx3
    l1 = jnp.mean(jnp.abs(err))
    l2 = jnp.mean(err**2)
    codebook = jnp.mean((jax.lax.stop_gradient(z) - z_q) ** 2)
    commitment = jnp.mean((z - jax.lax.stop_gradient(z_q)) ** 2)
    loss = l1 + l2_weight * l2 + codebook + beta * commitment
    aux = {
        "loss": loss,
        "l1": l1,
        "l2": l2,
        "codebook": codebook,
        "commitment": commitment,
        "codes": codes,
        "recon": recon,
    }
    return loss, aux
