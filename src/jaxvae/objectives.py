"""The training objectives, selected by `Config.objective`: pure functions of (model, x, key) -> (loss, metrics).

  elbo    mean_b [NLL_b + beta KL_b], losses.vae_loss (the chapter's; beta 1 is -ELBO)
  iwae    -mean_b log 1/K sum_k w_bk, log w_bk = log p(x_b|z_bk) + beta (log p(z_bk) - log q(z_bk|x_b)),
          z_bk ~ q(z|x_b) (Burda et al. 2016; beta 1 is their bound, beta != 1 tempers the prior ratio).
          K = 1 is the ELBO itself, so it is computed as elbo is, closed-form KL and all: the same noise
          gives the same loss and the same gradients.
  btcvae  mean_b [NLL_b + a MI_b + b TC_b + c DWKL_b] at one z_b ~ q(z|x_b) (Chen et al. 2018):
            MI   = log q(z|x) - log q(z)                index-code mutual information
            TC   = log q(z) - sum_j log q(z_j)          total correlation
            DWKL = sum_j log q(z_j) - log p(z)          dimension-wise KL
          They telescope: with a = b = c = 1 the sum is log q(z|x) - log p(z), the one-sample KL.
          The aggregate posterior q(z) = 1/N sum_n q(z|x_n) is estimated from the minibatch by
          minibatch-stratified sampling (see aggregate_log_density): unbiased for q(z), and exact
          when the minibatch is the whole dataset. It needs N, the dataset size.

Every objective's metrics carry the five the training loop validates and logs (loss,
reconstruction_loss, kl_loss, x_std, z_std; kl_loss is KL(q(z|x) || p(z)), unweighted) and its own
terms: negative_elbo and iwae_gap for iwae; mi, tc and dimwise_kl for btcvae.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxvae import priors
from jaxvae.config import Config, ConfigError
from jaxvae.distributions import DiagonalGaussian
from jaxvae.losses import kl_weight, vae_loss


def importance_log_weights(model, x: jax.Array, key: jax.Array, k: int, beta: float | jax.Array = 1.0):
    """K importance samples per example and their log-weights.

    Args:
      x: (B, ...) data; key: the noise, eps ~ N(0, I) of shape (K, B, Z).
    Returns:
      log_w: (K, B) log p(x|z_k) + beta (log p(z_k) - log q(z_k|x)).
      nll: (K, B) -log p(x|z_k).
      log_ratio: (K, B) log p(z_k) - log q(z_k|x).
      aux: dict with q (B, Z), p (over (K*B, ...)) and z (K, B, Z).
    """
    q: DiagonalGaussian = model.encode(x)
    b, z_dim = q.mean.shape
    z = q.mean[None] + q.std[None] * jax.random.normal(key, (k, b, z_dim), q.mean.dtype)  # (K, B, Z)
    p = model.decode(z.reshape(k * b, z_dim))
    x_k = jnp.broadcast_to(x.astype(jnp.float32), (k, *x.shape)).reshape(k * b, *x.shape[1:])
    nll = -jnp.sum(p.log_prob(x_k), axis=tuple(range(1, x.ndim))).reshape(k, b)  # (K, B)
    log_ratio = priors.of(model).log_prob(z) - jnp.sum(q.log_prob(z), axis=-1)  # (K, B)
    return -nll + beta * log_ratio, nll, log_ratio, {"q": q, "p": p, "z": z}


def iwae_loss(model, x: jax.Array, key: jax.Array, k: int, beta: float | jax.Array = 1.0) -> tuple[jax.Array, dict]:
    """-mean_b logmeanexp_k log w_bk and its metrics (see the module docstring)."""
    if k == 1:  # the bound is the ELBO: compute it as elbo does, so that the same noise gives the same loss
        loss, metrics = vae_loss(model, x, key, beta)
        return loss, {**metrics, "negative_elbo": loss, "iwae_gap": jnp.zeros_like(loss)}
    log_w, nll, log_ratio, aux = importance_log_weights(model, x, key, k, beta)
    bound = jax.nn.logsumexp(log_w, axis=0) - math.log(k)  # (B,)
    loss = -jnp.mean(bound)
    prior = priors.of(model)
    kl = prior.kl(aux["q"], aux["z"][0]) if prior.analytic_kl else -jnp.mean(log_ratio, axis=0)  # (B,)
    negative_elbo = -jnp.mean(log_w)  # the K-sample ELBO estimate (with the same beta)
    metrics = {
        "loss": loss,
        "reconstruction_loss": jnp.mean(nll),
        "kl_loss": jnp.mean(kl),
        "beta": jnp.asarray(beta, jnp.float32),
        "x_std": jnp.mean(aux["p"].std),
        "z_std": jnp.mean(aux["q"].std),
        "negative_elbo": negative_elbo,
        "iwae_gap": negative_elbo - loss,  # >= 0: how much tighter the K-sample bound is
    }
    return loss, metrics


def stratified_log_weights(m: int, n: int) -> jax.Array:
    """(M, M) log weights of minibatch-stratified sampling of q(z_i) from a minibatch of M of N examples.

    q(z_i) = 1/N q(z_i|x_i) + 1/N sum_{n != i} q(z_i|x_n). The first stratum is x_i itself, weight 1/N;
    the other M - 1 minibatch examples are a uniform draw from the other N - 1, so each stands for
    (N - 1) / (M - 1) of them: weight (N - 1) / (N (M - 1)). The estimate of q(z_i) is unbiased, and
    equals the exact mixture when the minibatch is the whole dataset (M = N: every weight is 1/N).
    Minibatch-weighted sampling, Chen et al.'s other estimator, weighs every term 1/(N M): it is
    biased (log N too low at M = N), so this one is used.
    """
    if n < 1:
        raise ConfigError(f"--objective btcvae needs the dataset size N >= 1, got {n}")
    if m < 2:  # (validation on a single held-out example) nothing stands for the others: q(z|x)/N, a lower bound
        return jnp.full((1, 1), -math.log(n), jnp.float32)
    other = math.log(n - 1) - math.log(n) - math.log(m - 1) if n > 1 else -math.inf
    return jnp.where(jnp.eye(m, dtype=bool), -math.log(n), other).astype(jnp.float32)


def aggregate_log_density(z: jax.Array, q: DiagonalGaussian, dataset_size: int) -> tuple[jax.Array, jax.Array]:
    """Estimates of log q(z_i) and of each dim's log q(z_ij) from a minibatch (minibatch-stratified sampling).

    Args:
      z: (M, Z) one sample per example, z_i ~ q(z|x_i).
      q: the minibatch's posteriors, (M, Z) means and log-stds.
      dataset_size: N.
    Returns: (M,) log q(z_i) and (M, Z) log q(z_ij), the aggregate posterior's marginal in dim j.
    """
    m = z.shape[0]
    pairwise = DiagonalGaussian(q.mean[None], q.log_std[None]).log_prob(z[:, None])  # (M_i, M_j, Z)
    log_w = stratified_log_weights(m, dataset_size)  # (M_i, M_j)
    log_qz = jax.nn.logsumexp(log_w + jnp.sum(pairwise, axis=-1), axis=1)  # (M,)
    log_qz_dim = jax.nn.logsumexp(log_w[..., None] + pairwise, axis=1)  # (M, Z)
    return log_qz, log_qz_dim


def btcvae_terms(model, x: jax.Array, key: jax.Array, dataset_size: int) -> dict:
    """Per example (B,): nll, mi, tc, dimwise_kl at one z ~ q(z|x) (the same draw as elbo's), and q, p."""
    q: DiagonalGaussian = model.encode(x)
    z = q.sample(key)  # (B, Z)
    p = model.decode(z)
    nll = -jnp.sum(p.log_prob(x.astype(jnp.float32)), axis=tuple(range(1, x.ndim)))
    log_qzx = jnp.sum(q.log_prob(z), axis=-1)
    log_qz, log_qz_dim = aggregate_log_density(z, q, dataset_size)
    log_prod = jnp.sum(log_qz_dim, axis=-1)
    log_pz = priors.of(model).log_prob(z)
    return {"nll": nll, "mi": log_qzx - log_qz, "tc": log_qz - log_prod, "dimwise_kl": log_prod - log_pz,
            "q": q, "p": p, "z": z}


def btcvae_loss(model, x: jax.Array, key: jax.Array, dataset_size: int, mi_weight: float = 1.0,
                tc_weight: float = 1.0, dimwise_weight: float = 1.0,
                ramp: float | jax.Array = 1.0) -> tuple[jax.Array, dict]:
    """mean_b [NLL + ramp (a MI + b TC + c DWKL)] and its metrics; ramp is the KL warm-up factor in [0, 1]."""
    t = btcvae_terms(model, x, key, dataset_size)
    rate = mi_weight * t["mi"] + tc_weight * t["tc"] + dimwise_weight * t["dimwise_kl"]
    loss = jnp.mean(t["nll"] + ramp * rate)
    metrics = {
        "loss": loss,
        "reconstruction_loss": jnp.mean(t["nll"]),
        "kl_loss": jnp.mean(priors.of(model).kl(t["q"], t["z"])),
        "x_std": jnp.mean(t["p"].std),
        "z_std": jnp.mean(t["q"].std),
        "mi": jnp.mean(t["mi"]),
        "tc": jnp.mean(t["tc"]),
        "dimwise_kl": jnp.mean(t["dimwise_kl"]),
    }
    return loss, metrics


def objective_loss(c: Config, model, x: jax.Array, key: jax.Array, step: jax.Array | None = None):
    """The loss of c.objective and its metrics. step: the train step (KL warm-up); None for validation,
    which uses the full weights, so that a warm-up does not flatter early values."""
    beta = c.beta if step is None else kl_weight(step, c.beta, c.kl_warmup_steps)
    if c.objective == "iwae":
        return iwae_loss(model, x, key, c.iw_k, beta)
    if c.objective == "btcvae":
        if c.dataset_size < 1:
            raise ConfigError("--objective btcvae needs the dataset size N (the training set's size), which "
                              "this data does not give: pass --dataset-size N")
        ramp = 1.0 if step is None else kl_weight(step, 1.0, c.kl_warmup_steps)
        return btcvae_loss(model, x, key, c.dataset_size, c.mi_weight, c.tc_weight, c.dimwise_weight, ramp)
    return vae_loss(model, x, key, beta, c.free_bits)
