"""The decoder's likelihood p(x|z): how many values the decoder emits per data value, and how they
become a distribution. Adding a likelihood is one class here (and its distribution in distributions.py).

  gaussian   DiagonalGaussian. sigma per value from the decoder (2 values: mean, raw scale), one
             learned sigma for all values (`decoder_scale_sharing shared`, 1 value: the mean), a fixed
             sigma (`decoder_variance fixed`), or for `arch linear` a free sigma per data dimension
             (independent of z, so the model stays linear-Gaussian, i.e. probabilistic PCA)
  bernoulli  Bernoulli from logits (1 value) over {-1, 1} for images, {0, 1} for vectors
  logistic   DiscretizedLogisticMixture of `mixtures` K logistics per value: 2 values for K = 1
             (mean, log-scale), 3K for K > 1 (weight logits, means, log-scales)

A head is an nnx.Module, so a learned sigma that does not depend on z is a parameter of the head.
Shapes: the decoder's output is (B, *shape[:-1], k * shape[-1]) for data of shape (B, *shape).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvae.config import Config
from jaxvae.distributions import Bernoulli, DiagonalGaussian, DiscretizedLogisticMixture


def _split(out: jax.Array, k: int) -> list[jax.Array]:
    """(..., k*C) -> k arrays (..., C): the decoder emits [first | second | ...] on its last axis."""
    return jnp.split(out.astype(jnp.float32), k, axis=-1)


class GaussianHead(nnx.Module):
    def __init__(self, c: Config):
        self.scale = c.decoder_scale
        learned = c.decoder_variance == "learned"
        per_dim = learned and c.decoder_scale_sharing == "per-dim"
        self.values_per_output = 2 if per_dim and c.arch != "linear" else 1
        self.fixed_log_std = None if learned else float(np.log(c.decoder_std))
        # A raw scale that does not depend on z: one scalar (shared), or one per data value (linear).
        shape = () if learned and not per_dim else c.data_shape if per_dim and c.arch == "linear" else None
        self.raw_scale = nnx.Param(jnp.zeros(shape)) if shape is not None else None

    def __call__(self, out: jax.Array) -> DiagonalGaussian:
        if self.values_per_output == 2:
            mean, raw = _split(out, 2)
            return DiagonalGaussian.from_raw(mean, raw, self.scale)
        mean = out.astype(jnp.float32)
        if self.fixed_log_std is not None:
            return DiagonalGaussian(mean=mean, log_std=jnp.full_like(mean, self.fixed_log_std))
        return DiagonalGaussian.from_raw(mean, jnp.broadcast_to(self.raw_scale[...], mean.shape), self.scale)


class BernoulliHead(nnx.Module):
    values_per_output = 1

    def __init__(self, c: Config):
        # The two values: the ends of the pixel range for images, 0/1 for vector data.
        self.support = (0.0, 1.0) if c.vector_data else (-1.0, 1.0)

    def __call__(self, out: jax.Array) -> Bernoulli:
        return Bernoulli(out.astype(jnp.float32), *self.support)


class LogisticHead(nnx.Module):
    def __init__(self, c: Config):
        self.mixtures = c.mixtures
        self.values_per_output = 2 if c.mixtures == 1 else 3 * c.mixtures

    def __call__(self, out: jax.Array) -> DiscretizedLogisticMixture:
        k = self.mixtures
        if k == 1:
            mean, raw = _split(out, 2)
            return DiscretizedLogisticMixture.from_raw(jnp.zeros_like(mean)[..., None], mean[..., None],
                                                       raw[..., None])
        # (..., 3K*C) -> (..., C, K) each: the decoder emits K weight logits, K means, K log-scales per value
        logits, means, raw = (a.reshape(*a.shape[:-1], -1, k) for a in _split(out, 3))
        return DiscretizedLogisticMixture.from_raw(logits, means, raw)


LIKELIHOODS = {"gaussian": GaussianHead, "bernoulli": BernoulliHead, "logistic": LogisticHead}


def build(c: Config) -> GaussianHead | BernoulliHead | LogisticHead:
    return LIKELIHOODS[c.likelihood](c)


def values_per_output(c: Config) -> int:
    """k, the values the decoder emits per data value for config c (without building a model)."""
    return build(c).values_per_output
