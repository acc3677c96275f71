"""The VAE objective as pure functions.

Per image, in nats: NLL(x | z) summed over pixels and channels, plus beta * KL(q(z|x) || N(0,I))
summed over latent dims; then the mean over the batch. Summing (not averaging) over non-batch
axes keeps the two terms on the ELBO's scale: with beta = 1 the loss is exactly -ELBO.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvae.distributions import DiagonalGaussian


def negative_elbo_terms(model, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
    """One-sample estimate of the two ELBO terms per image.

    Args:
      model: a jaxvae VAE (anything with encode(x) -> q(z|x) and decode(z) -> p(x|z)).
      x: (B, ...) data in the model's range.
      key: PRNG key for the reparameterized sample.
    Returns:
      nll: (B,) -log p(x|z), z ~ q(z|x), summed over all non-batch axes.
      kl: (B,) KL(q(z|x) || N(0, I)) summed over latent dims.
      aux: dict with the posterior q and the likelihood p.
    """
    q: DiagonalGaussian = model.encode(x)
    z = q.sample(key)
    p: DiagonalGaussian = model.decode(z)
    sum_axes = tuple(range(1, x.ndim))
    nll = -jnp.sum(p.log_prob(x.astype(jnp.float32)), axis=sum_axes)
    kl = jnp.sum(q.kl_to_standard_normal(), axis=-1)
    return nll, kl, {"q": q, "p": p}


def vae_loss(model, x: jax.Array, key: jax.Array, beta: float) -> tuple[jax.Array, dict]:
    """mean_b [NLL_b + beta * KL_b] and the metrics the chapter plots.

    Returns:
      loss: scalar.
      metrics: reconstruction_loss and kl_loss (batch means, KL unweighted), x_std (mean decoder
        sigma), z_std (mean posterior sigma).
    """
    nll, kl, aux = negative_elbo_terms(model, x, key)
    loss = jnp.mean(nll + beta * kl)
    metrics = {
        "loss": loss,
        "reconstruction_loss": jnp.mean(nll),
        "kl_loss": jnp.mean(kl),
        "x_std": jnp.mean(aux["p"].std),
        "z_std": jnp.mean(aux["q"].std),
    }
    return loss, metrics
