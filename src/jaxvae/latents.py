"""What the latent dimensions do: KL per dimension and which dimensions are active.

A VAE under a KL penalty switches most latent dimensions off (their posterior collapses onto the
prior, KL ~ 0) and codes the images in a few. The KL per dimension, averaged over held-out images,
says which; a traversal (pictures.py, `jaxvae traverse`) shows what one of them draws.

With a VampPrior (priors.py) the KL per dimension is KL(q(z_d|x) || p(z_d)) against the prior's
marginal in dimension d, by Monte Carlo; for N(0, I) it is the closed form.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvae import priors
from jaxvae import sample as sample_lib
from jaxvae.distributions import DiagonalGaussian

HELD_OUT = 512  # images the KL per dimension is averaged over
ACTIVE_VARIANCE = 0.01  # Burda et al. (2016): dimension d is active when Var_x E_q[z_d|x] > 0.01


@nnx.jit
def _posterior(model, x):
    q = model.encode(x)
    return q.mean, q.log_std


def posterior(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B,S,S,C) in [-1,1] -> (mean, log_std) of q(z|x), each (B,Z) float64 numpy."""
    mean, log_std = sample_lib.batched(_posterior, model, x)
    return mean.astype(np.float64), log_std.astype(np.float64)


def kl_per_dim(mean: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    """(B,Z), (B,Z) -> (Z,): KL(q(z_d|x) || N(0,1)) in nats, averaged over the B images.

    Summed over d this is the mean KL the loss logs as kl_loss (before beta)."""
    var = np.exp(2 * log_std)
    return np.mean(0.5 * (var + np.square(mean) - 1.0 - 2 * log_std), axis=0)


MC_SAMPLES = 16  # draws per image of the Monte Carlo KL per dimension (VampPrior)


@nnx.jit(static_argnums=(4,))
def _mc_kl_per_dim(model, mean, log_std, key, samples):
    q = DiagonalGaussian(mean, log_std)  # (B, Z)
    mixture = model.prior.mixture()

    def one(k):  # (B, Z): log q(z_d|x) - log p(z_d) at one z ~ q(z|x); B x K x Z floats live
        z = q.sample(k)
        return q.log_prob(z) - mixture.marginal_log_prob(z)

    return jnp.mean(jax.lax.map(one, jax.random.split(key, samples)), axis=(0, 1))


def prior_kl_per_dim(model, mean: np.ndarray, log_std: np.ndarray, seed: int = 0) -> np.ndarray:
    """(B,Z), (B,Z) -> (Z,): the KL per dimension against the model's prior, mean over the B images.

    N(0, I): kl_per_dim, closed form. VampPrior: KL(q(z_d|x) || p(z_d)), p(z_d) the prior's marginal in
    dimension d (a 1-D mixture), by Monte Carlo with MC_SAMPLES draws per image. The prior's dims are
    dependent, so these need not sum to the KL of the loss."""
    prior = priors.of(model)
    if prior.analytic_kl:
        return kl_per_dim(mean, log_std)
    out = _mc_kl_per_dim(model, jnp.asarray(mean, jnp.float32), jnp.asarray(log_std, jnp.float32),
                         jax.random.key(seed), MC_SAMPLES)
    return np.asarray(out, np.float64)


def posterior_mean_variance(mean: np.ndarray) -> np.ndarray:
    """(B,Z) -> (Z,): variance over images of the posterior mean, Var_x E_q[z_d|x]."""
    return np.var(mean, axis=0)


def most_active(kl: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k dimensions with the largest KL, largest first (ties: lower index first)."""
    order = np.argsort(-np.asarray(kl), kind="stable")
    return order[:k]


@dataclasses.dataclass(frozen=True)
class LatentStats:
    """Per-dimension statistics of q(z|x) over held-out images."""

    kl: np.ndarray  # (Z,) nats, mean over images
    mean_variance: np.ndarray  # (Z,) Var_x E_q[z_d|x]
    images: int  # how many held-out images they were averaged over

    @property
    def active(self) -> int:
        return int(np.sum(self.mean_variance > ACTIVE_VARIANCE))

    @classmethod
    def of(cls, mean: np.ndarray, log_std: np.ndarray, model=None) -> LatentStats:
        """From the posteriors (B,Z), (B,Z) of B held-out images (the KL against model's prior when given)."""
        kl = kl_per_dim(mean, log_std) if model is None else prior_kl_per_dim(model, mean, log_std)
        return cls(kl=kl, mean_variance=posterior_mean_variance(mean), images=len(mean))


def latent_stats(model, x: np.ndarray) -> LatentStats:
    return LatentStats.of(*posterior(model, x), model=model)
