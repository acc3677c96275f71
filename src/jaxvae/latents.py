"""What the latent dimensions do: KL per dimension, which dimensions are active, and traversals.

A VAE under a KL penalty switches most latent dimensions off (their posterior collapses onto the
prior, KL ~ 0) and codes the images in a few. The KL per dimension, averaged over held-out images,
says which; a traversal shows what one of them draws: decode a held-out image's posterior mean
with that one coordinate swept over [-3, 3] prior standard deviations.

Also `jaxvae traverse RUN --dims ... --out FILE.png`.

With a VampPrior (priors.py) the KL per dimension is KL(q(z_d|x) || p(z_d)) against the prior's
marginal in dimension d, by Monte Carlo, and a traversal sweeps the prior marginal's mean +- span of
its std; for N(0, I) both are as above.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvae import priors
from jaxvae import sample as sample_lib
from jaxvae.config import TRAVERSAL_SPAN, TRAVERSAL_STEPS, ConfigError
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


def prior_moments(model) -> tuple[np.ndarray, np.ndarray]:
    """(Z,), (Z,): the prior's mean and std per dimension (0 and 1 for N(0, I))."""
    mean, std = nnx.jit(lambda m: m.marginal_moments())(priors.of(model))
    return np.asarray(mean, np.float64), np.asarray(std, np.float64)


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


def traversal_latents(z0: np.ndarray, dims, values: np.ndarray, center: np.ndarray | None = None,
                      scale: np.ndarray | None = None) -> np.ndarray:
    """(Z,), D dims, (T,) values -> (D,T,Z): row i is z0 with coordinate dims[i] set to each value,
    in prior sigmas around the prior's mean: center[d] + values * scale[d] ((Z,) each; default 0 and 1)."""
    z0 = np.asarray(z0, np.float32)
    dims = np.asarray(dims, np.int64)
    center = np.zeros(len(z0)) if center is None else np.asarray(center)
    scale = np.ones(len(z0)) if scale is None else np.asarray(scale)
    z = np.broadcast_to(z0, (len(dims), len(values), len(z0))).copy()
    coords = center[dims][:, None] + np.asarray(values)[None, :] * scale[dims][:, None]  # (D, T)
    z[np.arange(len(dims)), :, dims] = coords.astype(np.float32)
    return z


def traverse(model, x: np.ndarray, dims, steps: int = TRAVERSAL_STEPS,
             span: float = TRAVERSAL_SPAN) -> tuple[np.ndarray, np.ndarray]:
    """Decode traversals of `dims` around one image's posterior mean.

    Args:
      model: a VAE.
      x: (S,S,C) one image in [-1,1]; every other coordinate is held at its posterior mean.
      dims: D latent indices.
      steps: T images per row; span: the sweep is linspace(-span, span, T) (prior sigmas).
    Returns:
      images (D,T,S,S,C) decoder means, and values (T,).
    """
    values = np.linspace(-span, span, steps)
    z0 = posterior(model, np.asarray(x, np.float32)[None])[0][0]
    z = traversal_latents(z0, dims, values, *prior_moments(model))  # (D,T,Z)
    images = sample_lib.decode_mean(model, z.reshape(-1, z.shape[-1]))
    return images.reshape(len(z), steps, *images.shape[1:]), values


def check_dims(dims, z_dim: int) -> list[int]:
    bad = [d for d in dims if not 0 <= d < z_dim]
    if bad:
        raise ConfigError(f"--dims {bad} out of range: the model has z_dim {z_dim} (dims 0..{z_dim - 1})")
    if len(set(dims)) != len(dims):
        raise ConfigError(f"--dims {list(dims)} repeats a dimension")
    return list(dims)
