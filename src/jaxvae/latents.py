"""Latent statistics: which dimensions a VAE uses, and how much its z says about x.

A VAE under a KL penalty switches most latent dimensions off (their posterior collapses onto the
prior, KL ~ 0) and codes the images in a few. Over the posteriors q(z|x) of held-out images:

  kl_per_dim               E_x KL(q(z_d|x) || p(z_d)) per dim: where the rate is spent
  posterior_mean_variance  Var_x E_q[z_d|x] per dim; dim d is active when it is above ACTIVE_VARIANCE
                           (Burda et al. 2016): a collapsed dim's posterior mean ignores x
  mutual_information       I_q(x; z) (Hoffman & Johnson 2016). E_x KL(q(z|x) || p(z)) = I_q(x; z) +
                           KL(q(z) || p(z)): the KL splits into information about x and the mismatch of
                           the aggregate posterior q(z) = E_x q(z|x) with the prior

`LatentStats` holds the first two (the report, the traversals' choice of dims), `collapse` all three
(`jaxvae evaluate`). Every KL and density here is DiagonalGaussian's (distributions.py) or the prior's
(priors.py). With a VampPrior the KL per dimension is against the prior's marginal in dimension d, by
Monte Carlo; for N(0, I) it is the closed form.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvae import priors
from jaxvae import sample as sample_lib
from jaxvae.distributions import DiagonalGaussian

HELD_OUT = 512  # held-out images the report's and `jaxvae traverse`'s statistics are averaged over
# Burda et al. (2016): dimension d is active when Var_x E_q[z_d|x] > 0.01. The one threshold of the
# package: evaluate, the report, traverse and the chart all read it from here.
ACTIVE_VARIANCE = 0.01
MC_SAMPLES = 16  # draws per image of the Monte Carlo KL per dimension (VampPrior)
MI_EXAMPLES = 2000  # I_q(x; z) costs M^2 Z: estimated on at most this many examples


@nnx.jit
def _posterior(model, x):
    q = model.encode(x)
    return q.mean, q.log_std


def posterior(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B,S,S,C) in [-1,1] -> (mean, log_std) of q(z|x), each (B,Z) float64 numpy."""
    mean, log_std = sample_lib.batched(_posterior, model, x)
    return mean.astype(np.float64), log_std.astype(np.float64)


def kl_per_dim(mean: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    """(B,Z), (B,Z) -> (Z,): KL(q(z_d|x) || N(0,1)) in nats, DiagonalGaussian's closed form averaged
    over the B images. Summed over d this is the mean KL the loss logs as kl_loss (before beta)."""
    kl = DiagonalGaussian(jnp.asarray(mean), jnp.asarray(log_std)).kl_to_standard_normal()  # (B, Z)
    return np.mean(np.asarray(kl, np.float64), axis=0)


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
    if priors.of(model).analytic_kl:
        return kl_per_dim(mean, log_std)
    out = _mc_kl_per_dim(model, jnp.asarray(mean, jnp.float32), jnp.asarray(log_std, jnp.float32),
                         jax.random.key(seed), MC_SAMPLES)
    return np.asarray(out, np.float64)


def posterior_mean_variance(mean: np.ndarray) -> np.ndarray:
    """(B,Z) -> (Z,): Var_x E_q[z_d|x], the variance over the B images of the posterior mean.

    The population variance (ddof 0) of these images, the one estimator of the package: it describes
    the set measured, is 0 for a single image without a special case, and the report, `jaxvae
    traverse` and `jaxvae evaluate` count the same active units on the same posteriors. (evaluate
    once used ddof 1, so the two could disagree for a dim at the threshold.)"""
    return np.var(np.asarray(mean, np.float64), axis=0)


def active_units(mean_variance: np.ndarray) -> int:
    """How many dims have Var_x E_q[z_d|x] > ACTIVE_VARIANCE."""
    return int(np.sum(np.asarray(mean_variance) > ACTIVE_VARIANCE))


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
        return active_units(self.mean_variance)

    @classmethod
    def of(cls, mean: np.ndarray, log_std: np.ndarray, model=None) -> LatentStats:
        """From the posteriors (B,Z), (B,Z) of B held-out images (the KL against model's prior when given)."""
        kl = kl_per_dim(mean, log_std) if model is None else prior_kl_per_dim(model, mean, log_std)
        return cls(kl=kl, mean_variance=posterior_mean_variance(mean), images=len(mean))


def latent_stats(model, x: np.ndarray) -> LatentStats:
    return LatentStats.of(*posterior(model, x), model=model)


@functools.partial(jax.jit, static_argnames=("rows",))
def _mutual_information(mean, log_std, key, *, rows: int):
    m, z_dim = mean.shape
    own = DiagonalGaussian(mean, log_std)  # (M, Z): q(z|x_i) of each example
    z = own.sample(key)  # z_i ~ q(z|x_i), (M, Z)
    log_qzx = jnp.sum(own.log_prob(z), axis=-1)  # log q(z_i|x_i), (M,)
    chunks = -(-m // rows)
    z = jnp.pad(z, ((0, chunks * rows - m), (0, 0))).reshape(chunks, rows, z_dim)
    q = DiagonalGaussian(mean[None], log_std[None])  # (1, M, Z): every example's posterior

    def log_aggregate(zi):  # (R, Z) -> (R,) log sum_j q(z_i | x_j); R x M x Z floats live
        return jax.nn.logsumexp(jnp.sum(q.log_prob(zi[:, None]), axis=-1), axis=1)

    log_qz = jax.lax.map(log_aggregate, z).reshape(-1)[:m] - math.log(m)  # log q(z_i), (M,)
    return jnp.mean(log_qzx - log_qz)


def mutual_information(mean: np.ndarray, log_std: np.ndarray, key: jax.Array, cap_bytes: int) -> float:
    """I_q(x; z) = E_x E_q(z|x)[log q(z|x) - log q(z)] (Hoffman & Johnson 2016), q(z) = mean_j q(z|x_j).

    One draw z_i ~ q(z|x_i) per example, scored by its own posterior and by the aggregate posterior
    of the same M examples. As q(z_i) >= q(z_i|x_i) / M, the estimate is at most log M: with few
    examples it underestimates a large I_q.
    Args: mean, log_std: (M, Z) posterior parameters; cap_bytes bounds the (rows, M, Z) block.
    Returns nats.
    """
    m, z_dim = mean.shape
    rows = int(max(1, min(m, cap_bytes // (3 * 4 * m * z_dim))))
    return float(_mutual_information(jnp.asarray(mean, jnp.float32), jnp.asarray(log_std, jnp.float32), key,
                                     rows=rows))


def collapse(posterior_mean: np.ndarray, posterior_log_std: np.ndarray, kl_per_dim: np.ndarray,
             key: jax.Array, cap_bytes: int, seed: int = 0, kl_total: np.ndarray | None = None) -> dict:
    """The posterior-collapse diagnostics of N examples' posteriors, JSON-ready.

    Args:
      posterior_mean, posterior_log_std, kl_per_dim: (N, Z) each.
      key: for the MI draws; seed picks the (at most MI_EXAMPLES) examples MI is estimated on.
      kl_total: (N,) each example's KL when the KLs per dim do not sum to it (a VampPrior's per-dim KLs
        are against the prior's marginals); None: the sum of kl_per_dim.
    Returns: active_units, active_unit_threshold, latent_activity (posterior_mean_variance, in latent
      order), kl_per_dim (sorted, largest first) with kl_per_dim_index (the latent of each),
      mutual_information with mutual_information_examples and _max (log M), and
      marginal_kl = E KL - I_q = KL(q(z) || p(z)).
    """
    n = len(posterior_mean)
    activity = posterior_mean_variance(posterior_mean)
    kl_dim = np.asarray(kl_per_dim, np.float64).mean(axis=0)
    order = np.argsort(-kl_dim, kind="stable")
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:MI_EXAMPLES])
    mi = mutual_information(posterior_mean[pick], posterior_log_std[pick], key, cap_bytes)
    return {
        "active_units": active_units(activity),
        "active_unit_threshold": ACTIVE_VARIANCE,
        "latent_activity": [float(a) for a in activity],
        "kl_per_dim": [float(kl_dim[j]) for j in order],
        "kl_per_dim_index": [int(j) for j in order],
        "mutual_information": mi,
        "mutual_information_examples": len(pick),
        "mutual_information_max": math.log(len(pick)),
        "marginal_kl": float((kl_dim.sum() if kl_total is None else np.mean(kl_total)) - mi),
    }


def plot_kl_per_dim(r: dict, path: str | Path) -> None:
    """plots.kl_per_dim of collapse()'s (or evaluate()'s) result: bars sorted by KL, active ones blue."""
    from jaxvae import plots

    index = np.asarray(r["kl_per_dim_index"])
    kl = np.empty(len(index))
    kl[index] = r["kl_per_dim"]  # back to latent order
    plots.kl_per_dim(kl, Path(path), mean_variance=np.asarray(r["latent_activity"]),
                     threshold=r["active_unit_threshold"], order=index)
