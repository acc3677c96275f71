"""p(z), the prior: one small module that every consumer of log p(z) asks.

  StandardNormal  N(0, I), the chapter's prior: closed-form KL, no parameters
  VampPrior       p(z) = 1/K sum_k q(z | u_k), the posteriors of K learned pseudo-inputs u_k in data
                  space passed through the model's own encoder (Tomczak & Welling 2018)

Both offer log_prob(z) (the joint density), marginal_log_prob(z) (per dim: log p(z_j)), sample(key, n,
temperature), marginal_moments() (per-dim mean and std, for traversals) and kl(q, z), the KL term of
the loss: closed form for N(0, I); for the VampPrior, which has none, the one-sample Monte Carlo
estimate log q(z|x) - log p(z) at the z the loss decoded. The VAE owns its prior (`model.prior`), so
the losses, evaluate's IWAE, sampling, traversals and the collapse diagnostics cannot disagree on it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxvae.distributions import DiagonalGaussian

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@struct.dataclass
class UniformMixture:
    """1/K sum_k N(mean_k, diag(std_k^2)): the VampPrior with its K components computed once.

    components: a DiagonalGaussian of (K, Z) means and log-stds.
    """

    components: DiagonalGaussian

    def _per_component(self, z: jax.Array) -> jax.Array:
        """(..., Z) -> (..., K, Z): log N(z_j; mean_kj, std_kj^2) for every component k."""
        return self.components.log_prob(z[..., None, :])

    def log_prob(self, z: jax.Array) -> jax.Array:
        """(..., Z) -> (...): log 1/K sum_k prod_j N(z_j; mean_kj, std_kj^2)."""
        k = self.components.mean.shape[0]
        return jax.nn.logsumexp(jnp.sum(self._per_component(z), axis=-1), axis=-1) - math.log(k)

    def marginal_log_prob(self, z: jax.Array) -> jax.Array:
        """(..., Z) -> (..., Z): log p(z_j) = log 1/K sum_k N(z_j; mean_kj, std_kj^2), each dim's marginal."""
        k = self.components.mean.shape[0]
        return jax.nn.logsumexp(self._per_component(z), axis=-2) - math.log(k)

    def sample(self, key: jax.Array, n: int, temperature: float = 1.0) -> jax.Array:
        """(n, Z): a component k drawn uniformly, then z = mean_k + temperature * std_k * eps."""
        pick, noise = jax.random.split(key)
        k = jax.random.randint(pick, (n,), 0, self.components.mean.shape[0])
        chosen = DiagonalGaussian(self.components.mean[k], self.components.log_std[k])
        return chosen.sample(noise, temperature)

    def marginal_moments(self) -> tuple[jax.Array, jax.Array]:
        """(Z,), (Z,): the mixture's mean and std per dim (law of total variance)."""
        mean = jnp.mean(self.components.mean, axis=0)
        second = jnp.mean(self.components.var + jnp.square(self.components.mean), axis=0)
        return mean, jnp.sqrt(jnp.maximum(second - jnp.square(mean), 0.0))


class StandardNormal(nnx.Module):
    """N(0, I) over Z dims. No parameters: a model with it has exactly the chapter's parameters."""

    analytic_kl = True

    def __init__(self, z_dim: int):
        self.z_dim = z_dim

    def log_prob(self, z: jax.Array) -> jax.Array:
        """(..., Z) -> (...)."""
        return jnp.sum(self.marginal_log_prob(z), axis=-1)

    def marginal_log_prob(self, z: jax.Array) -> jax.Array:
        """(..., Z) -> (..., Z): log N(z_j; 0, 1)."""
        return -_HALF_LOG_2PI - 0.5 * jnp.square(z)

    def sample(self, key: jax.Array, n: int, temperature: float = 1.0) -> jax.Array:
        """(n, Z) draws of N(0, temperature^2 I)."""
        return temperature * jax.random.normal(key, (n, self.z_dim))

    def marginal_moments(self) -> tuple[jax.Array, jax.Array]:
        return jnp.zeros((self.z_dim,)), jnp.ones((self.z_dim,))

    def kl(self, q: DiagonalGaussian, z: jax.Array) -> jax.Array:
        """(B,) KL(q(z|x) || N(0, I)) in closed form (z, the loss's sample, is not needed)."""
        return jnp.sum(q.kl_to_standard_normal(), axis=-1)

    def mixture(self) -> StandardNormal:
        return self


class VampPrior(nnx.Module):
    """p(z) = 1/K sum_k q(z | u_k): a mixture of the posteriors of K learned pseudo-inputs u_k.

    The pseudo-inputs are parameters of the shape of the data (K, *data_shape), initialised near the
    middle of the model's range (gray images, or zero vectors, with a little noise to break symmetry);
    `encoder` is the VAE's own encoder (a shared reference, not a copy), so the prior follows it.
    """

    analytic_kl = False

    def __init__(self, encoder: nnx.Module, posterior_scale: str, pseudo_inputs: int, data_shape: tuple[int, ...],
                 *, rngs: nnx.Rngs):
        self.encoder, self.posterior_scale = encoder, posterior_scale
        self.pseudo_inputs = nnx.Param(0.01 * jax.random.normal(rngs.params(), (pseudo_inputs, *data_shape)))

    def mixture(self) -> UniformMixture:
        """The prior with its components computed: encode the K pseudo-inputs once, (K, Z) each."""
        mean, raw = self.encoder(self.pseudo_inputs[...])
        return UniformMixture(DiagonalGaussian.from_raw(mean, raw, self.posterior_scale))

    def log_prob(self, z: jax.Array) -> jax.Array:
        return self.mixture().log_prob(z)

    def marginal_log_prob(self, z: jax.Array) -> jax.Array:
        return self.mixture().marginal_log_prob(z)

    def sample(self, key: jax.Array, n: int, temperature: float = 1.0) -> jax.Array:
        return self.mixture().sample(key, n, temperature)

    def marginal_moments(self) -> tuple[jax.Array, jax.Array]:
        return self.mixture().marginal_moments()

    def kl(self, q: DiagonalGaussian, z: jax.Array) -> jax.Array:
        """(B,) one-sample Monte Carlo KL: log q(z|x) - log p(z) at z ~ q(z|x), (B, Z)."""
        return jnp.sum(q.log_prob(z), axis=-1) - self.log_prob(z)


def build(c, encoder: nnx.Module, *, rngs: nnx.Rngs) -> StandardNormal | VampPrior:
    """The prior a config asks for (c.prior), over c.z_dim latents."""
    if c.prior == "vamp":
        return VampPrior(encoder, c.posterior_scale, c.pseudo_inputs, c.data_shape, rngs=rngs)
    return StandardNormal(c.z_dim)


def of(model) -> StandardNormal | VampPrior:
    """A model's prior; N(0, I) for a model without one (a bare encoder/decoder pair in a test)."""
    prior = getattr(model, "prior", None)
    return prior if prior is not None else StandardNormal(model.decoder.embed.in_features)
