"""The VAE objective as pure functions.

Per image, in nats: NLL(x | z) summed over pixels and channels, plus beta * KL(q(z|x) || N(0,I))
summed over latent dims; then the mean over the batch. Summing (not averaging) over non-batch
axes keeps the two terms on the ELBO's scale: with beta = 1 the loss is exactly -ELBO.

Two departures from the plain objective, both off by default: a KL weight beta that warms up
linearly from 0 (`kl_weight`), and free bits (Kingma et al. 2016), which averages each latent
dim's KL over the batch and clamps it below at lambda, so no dim is pushed under lambda nats.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvae import priors
from jaxvae.distributions import DiagonalGaussian


def negative_elbo_terms(model, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
    """One-sample estimate of the two ELBO terms per image.

    Args:
      model: a jaxvae VAE (anything with encode(x) -> q(z|x) and decode(z) -> p(x|z)).
      x: (B, ...) data in the model's range.
      key: PRNG key for the reparameterized sample.
    Returns:
      nll: (B,) -log p(x|z), z ~ q(z|x), summed over all non-batch axes.
      kl: (B,) KL(q(z|x) || p(z)) summed over latent dims: closed form for N(0, I), the one-sample
        Monte Carlo log q(z|x) - log p(z) at the same z for a prior without one (the VampPrior).
      aux: dict with the posterior q and the likelihood p.
    """
    q: DiagonalGaussian = model.encode(x)
    z = q.sample(key)
    p: DiagonalGaussian = model.decode(z)
    sum_axes = tuple(range(1, x.ndim))
    nll = -jnp.sum(p.log_prob(x.astype(jnp.float32)), axis=sum_axes)
    kl = priors.of(model).kl(q, z)
    return nll, kl, {"q": q, "p": p}


def dequantize(x: jax.Array, key: jax.Array) -> jax.Array:
    """Uniform dequantization of 8-bit images in [-1, 1]: pixel value k becomes k + u, u ~ U[0, 1).

    x = k / 127.5 - 1, so the noise is u / 127.5. A density fitted to k + u bounds the discrete
    likelihood of k (Theis et al. 2016), which is what makes bits/dim a valid figure.
    """
    return x + jax.random.uniform(key, x.shape, jnp.float32) / 127.5


def binarize(x: jax.Array, mode: str, key: jax.Array) -> jax.Array:
    """Images in [-1, 1] -> binary images at -1 / 1 (a bernoulli likelihood's support), by pixel intensity
    t = (x + 1) / 2: static, t > 0.5 (the same every time); dynamic, a fresh Bernoulli(t) draw from key.
    mode "" leaves x as it is."""
    if mode == "static":
        return jnp.where(x > 0.0, 1.0, -1.0).astype(jnp.float32)
    if mode == "dynamic":
        return jnp.where(jax.random.bernoulli(key, (x + 1.0) / 2.0), 1.0, -1.0).astype(jnp.float32)
    return x


def kl_weight(step: jax.Array, beta: float, warmup_steps: int) -> jax.Array:
    """beta * min(1, step / warmup_steps): 0 at step 0, beta from warmup_steps on (beta if 0)."""
    if warmup_steps <= 0:
        return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def free_bits_kl(kl_per_dim: jax.Array, free_bits: float) -> jax.Array:
    """sum_j max(lambda, mean_b KL_bj): the KL term under free bits.

    Args:
      kl_per_dim: (B, Z) KL of each example's posterior per latent dim.
      free_bits: lambda in nats per latent dim.
    Returns: a scalar; below lambda a dim's KL has no gradient, so the objective stops squeezing it.
    """
    return jnp.sum(jnp.maximum(jnp.mean(kl_per_dim, axis=0), free_bits))


def vae_loss(model, x: jax.Array, key: jax.Array, beta: float | jax.Array,
             free_bits: float = 0.0) -> tuple[jax.Array, dict]:
    """mean_b [NLL_b + beta * KL_b] (or mean_b NLL_b + beta * free_bits_kl) and the chapter's metrics.

    Args:
      beta: the KL weight, a float or a traced scalar (warm-up, see kl_weight).
      free_bits: lambda > 0 switches the KL term to free_bits_kl.
    Returns:
      loss: scalar.
      metrics: reconstruction_loss and kl_loss (batch means, KL unweighted and unclamped), x_std
        (mean decoder sigma), z_std (mean posterior sigma), beta, and kl_objective (the KL term as
        optimised: the clamped sum under free bits, else kl_loss).
    """
    nll, kl, aux = negative_elbo_terms(model, x, key)
    if free_bits > 0:
        kl_term = free_bits_kl(aux["q"].kl_to_standard_normal(), free_bits)
        loss = jnp.mean(nll) + beta * kl_term
    else:
        kl_term = jnp.mean(kl)
        loss = jnp.mean(nll + beta * kl)
    metrics = {
        "loss": loss,
        "reconstruction_loss": jnp.mean(nll),
        "kl_loss": jnp.mean(kl),
        "kl_objective": kl_term,
        "beta": jnp.asarray(beta, jnp.float32),
        "x_std": jnp.mean(aux["p"].std),
        "z_std": jnp.mean(aux["q"].std),
    }
    return loss, metrics
