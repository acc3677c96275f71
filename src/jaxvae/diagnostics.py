"""Posterior-collapse diagnostics: which latent dims a VAE uses, and how much its z says about x.

  latent_activity     Cov_x(E_q[z_j]) per dim; the active units are the dims above 0.01
                      (Burda et al. 2016): a collapsed dim's posterior mean ignores x
  kl per dim          E_x KL(q(z_j|x) || N(0, 1)), sorted: where the rate is spent
  mutual_information  I_q(x; z) (Hoffman & Johnson 2016). E_x KL(q(z|x) || p(z)) = I_q(x; z) +
                      KL(q(z) || p(z)): the KL splits into information about x and the mismatch
                      of the aggregate posterior q(z) = E_x q(z|x) with the prior

`collapse` computes all three from the posteriors of a data set; `plot_kl_per_dim` draws the chart.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxvae.distributions import DiagonalGaussian

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016
MI_EXAMPLES = 2000  # I_q(x; z) costs M^2 Z: estimated on at most this many examples


def latent_activity(posterior_mean: np.ndarray) -> np.ndarray:
    """(N, Z) posterior means -> (Z,) their variance over the examples (0 for a single example)."""
    means = np.asarray(posterior_mean, np.float64)
    return means.var(axis=0, ddof=1) if len(means) > 1 else np.zeros(means.shape[1])


@functools.partial(jax.jit, static_argnames=("rows",))
def _mutual_information(mean, log_std, key, *, rows: int):
    m, z_dim = mean.shape
    posterior = DiagonalGaussian(mean, log_std)
    z = posterior.sample(key)  # z_i ~ q(z|x_i), (M, Z)
    log_qzx = jnp.sum(posterior.log_prob(z), axis=-1)  # log q(z_i|x_i), (M,)
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
    """The diagnostics of N examples' posteriors, JSON-ready.

    Args:
      posterior_mean, posterior_log_std, kl_per_dim: (N, Z) each.
      key: for the MI draws; seed picks the (at most MI_EXAMPLES) examples MI is estimated on.
      kl_total: (N,) each example's KL when the KLs per dim do not sum to it (a VampPrior's per-dim KLs
        are against the prior's marginals); None: the sum of kl_per_dim.
    Returns: active_units, active_unit_threshold, latent_activity (Z, in latent order), kl_per_dim
      (sorted, largest first) with kl_per_dim_index (the latent of each), mutual_information with
      mutual_information_examples and _max (log M), and marginal_kl = E KL - I_q = KL(q(z) || p(z)).
    """
    n = len(posterior_mean)
    activity = latent_activity(posterior_mean)
    kl_dim = np.asarray(kl_per_dim, np.float64).mean(axis=0)
    order = np.argsort(-kl_dim, kind="stable")
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:MI_EXAMPLES])
    mi = mutual_information(posterior_mean[pick], posterior_log_std[pick], key, cap_bytes)
    return {
        "active_units": int(np.sum(activity > ACTIVE_UNIT_THRESHOLD)),
        "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
        "latent_activity": [float(a) for a in activity],
        "kl_per_dim": [float(kl_dim[j]) for j in order],
        "kl_per_dim_index": [int(j) for j in order],
        "mutual_information": mi,
        "mutual_information_examples": len(pick),
        "mutual_information_max": math.log(len(pick)),
        "marginal_kl": float((kl_dim.sum() if kl_total is None else np.mean(kl_total)) - mi),
    }


def plot_kl_per_dim(r: dict, path: str | Path) -> None:
    """A bar chart of collapse()'s (or evaluate()'s) sorted KL per latent dim, active units in blue."""
    from jaxvae.plots import plt  # matplotlib with the Agg backend, as for every other picture

    kl, index = r["kl_per_dim"], r["kl_per_dim_index"]
    active = [r["latent_activity"][j] > r["active_unit_threshold"] for j in index]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * len(kl) + 1.5), 3))
    ax.bar(range(len(kl)), kl, color=["tab:blue" if a else "tab:gray" for a in active])
    ax.set_xticks(range(len(kl)), [str(j) for j in index], fontsize=7 if len(kl) > 24 else 9)
    ax.set_xlabel("latent dim (sorted by KL)")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"KL per latent dim: {r['active_units']} of {len(kl)} active (blue)")
    from jaxvae.outputs import PNG_METADATA

    fig.savefig(Path(path), dpi=100, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)
