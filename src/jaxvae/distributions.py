"""`DiagonalGaussian`: the one place where a scale is turned into sigma.

The encoder's posterior q(z|x) and the decoder's likelihood p(x|z) are both DiagonalGaussians,
so sampling, the KL and the NLL read the same `log_std` and can never disagree. That is the
chapter's bug made impossible: its KL read `log_std` as a log-variance while its sampling read it
as a log-std, and its NLL halved log sigma.

Why a log-scale at all (the seeds' question): a network output is unconstrained, sigma must be
> 0, and exp maps R onto (0, inf) smoothly. log-variance and log-std differ only by a factor 2
(log sigma^2 = 2 log sigma); softplus is the gentler alternative, linear for large inputs. All
three are offered; all are computed from log sigma directly.

The range of log sigma: `soft_clamp_log_std` leaves it unchanged on [-20, 20] (sigma from 2e-9 to
5e8, far beyond any trained model) and bends it smoothly towards +-30 beyond, as NVAE soft-clamps
its log-scales. So every method (std, var, sample, log_prob, the KL and their gradients) is finite
for every finite raw output in float32: exp(2 * 30) = 1e26 and exp(30)^2 (x - mean)^2 stay far below
float32's 3e38, where an unbounded log_std = 44 already made the variance inf.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from jaxvae.config import SCALE_PARAMETERIZATIONS as PARAMETERIZATIONS  # the names --posterior-scale takes

# softplus(raw) underflows towards 0 for very negative raw; the floor keeps sigma >= 1e-4 so
# log sigma >= -9.2 and 1/sigma^2 <= 1e8 stay finite in float32.
SOFTPLUS_FLOOR = 1e-4

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# log sigma is the identity on [-LOG_STD_LINEAR, LOG_STD_LINEAR] and tends to +-LOG_STD_LIMIT beyond.
LOG_STD_LINEAR, LOG_STD_LIMIT = 20.0, 30.0


def soft_clamp_log_std(log_std: jax.Array) -> jax.Array:
    """Identity for |log_std| <= 20; beyond, sign * (20 + 10 tanh((|log_std| - 20) / 10)), which meets
    it with slope 1 (no kink for the optimiser) and never reaches 30. Values in the identity range come
    back bitwise unchanged, so no model trained before the clamp changes."""
    width = LOG_STD_LIMIT - LOG_STD_LINEAR
    excess = jnp.maximum(jnp.abs(log_std) - LOG_STD_LINEAR, 0.0)  # 0 inside: both branches' gradients finite
    bent = jnp.sign(log_std) * (LOG_STD_LINEAR + width * jnp.tanh(excess / width))
    return jnp.where(jnp.abs(log_std) <= LOG_STD_LINEAR, log_std, bent)


@struct.dataclass
class DiagonalGaussian:
    """N(mean, diag(std^2)), stored as (mean, log_std). Any shape; all methods are elementwise."""

    mean: jax.Array
    log_std: jax.Array

    @classmethod
    def from_raw(cls, mean: jax.Array, raw: jax.Array, parameterization: str) -> DiagonalGaussian:
        """Build from a network's raw scale output.

        Args:
          mean: (...,) the mean.
          raw: (...,) unconstrained scale output, same shape as mean.
          parameterization: "log_var" (sigma = exp(raw/2)), "log_std" (sigma = exp(raw)) or
            "softplus" (sigma = softplus(raw) + SOFTPLUS_FLOOR); log sigma then goes through
            soft_clamp_log_std, so any finite raw gives finite results.
        """
        raw = raw.astype(jnp.float32)
        if parameterization == "log_var":
            log_std = 0.5 * raw
        elif parameterization == "log_std":
            log_std = raw
        elif parameterization == "softplus":
            log_std = jnp.log(jax.nn.softplus(raw) + SOFTPLUS_FLOOR)
        else:
            raise ValueError(f"unknown parameterization {parameterization!r}: choose one of {PARAMETERIZATIONS}")
        return cls(mean=mean.astype(jnp.float32), log_std=soft_clamp_log_std(log_std))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(self.log_std)

    @property
    def var(self) -> jax.Array:
        return jnp.exp(2.0 * self.log_std)

    def sample(self, key: jax.Array, temperature: float = 1.0) -> jax.Array:
        """Reparameterized draw mean + temperature * std * eps, eps ~ N(0, I): gradients flow."""
        eps = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + temperature * self.std * eps

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Elementwise log N(x; mean, std^2) = -1/2 log 2pi - log std - (x - mean)^2 / (2 std^2).

        x may have more leading axes than the distribution (several z per posterior, or one z against
        every component of a mixture): they broadcast explicitly, by NumPy's rules."""
        x, mean, log_std = jnp.broadcast_arrays(x, self.mean, self.log_std)
        z = (x - mean) * jnp.exp(-log_std)
        return -_HALF_LOG_2PI - log_std - 0.5 * jnp.square(z)

    def kl_to_standard_normal(self) -> jax.Array:
        """Elementwise KL(N(mean, std^2) || N(0, 1)) = 1/2 (std^2 + mean^2 - 1 - log std^2)."""
        return 0.5 * (self.var + jnp.square(self.mean) - 1.0 - 2.0 * self.log_std)


@struct.dataclass
class Bernoulli:
    """Independent Bernoullis over two values {low, high}, stored as logits. Elementwise, any shape.

    P(x = high) = sigmoid(logits). The support defaults to {0, 1}; images use {-1, 1}, the two
    ends of the model's pixel range, so that `.mean` is an image like a Gaussian decoder's mean.
    Same method names as DiagonalGaussian, so losses, sampling and evaluation take either.
    """

    logits: jax.Array
    low: float = struct.field(pytree_node=False, default=0.0)
    high: float = struct.field(pytree_node=False, default=1.0)

    @property
    def probs(self) -> jax.Array:
        return jax.nn.sigmoid(self.logits)

    @property
    def mean(self) -> jax.Array:
        return self.low + (self.high - self.low) * self.probs

    @property
    def var(self) -> jax.Array:
        p = self.probs
        return (self.high - self.low) ** 2 * p * (1.0 - p)

    @property
    def std(self) -> jax.Array:
        return jnp.sqrt(self.var)

    def sample(self, key: jax.Array, temperature: float = 1.0) -> jax.Array:
        """A draw in {low, high} (not reparameterizable; temperature divides the logits)."""
        hit = jax.random.bernoulli(key, jax.nn.sigmoid(self.logits / temperature))
        return jnp.where(hit, self.high, self.low).astype(jnp.float32)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Elementwise log P(x) = t log sigmoid(l) + (1 - t) log sigmoid(-l), t = (x - low)/(high - low).

        From the logits, stably: log sigmoid(l) = -softplus(-l), which neither overflows for large |l|
        nor rounds sigmoid to 0 or 1. A t between 0 and 1 gives the binary cross-entropy.
        """
        t = (x.astype(jnp.float32) - self.low) / (self.high - self.low)
        logits = self.logits.astype(jnp.float32)
        return -t * jax.nn.softplus(-logits) - (1.0 - t) * jax.nn.softplus(logits)


# The discretized logistic's log-scale floor: VDVAE's (`const_max(log_scales, -7.)`). At s = e^-7 ~ 0.0009,
# a ninth of a bin (2/255 in [-1, 1]), a bin centred on the mean holds 97.3% of the mass, so the floor
# costs at most 0.027 nats per value (0.04 bits/dim) and keeps 1/s <= 1100, the arguments modest.
LOGISTIC_MIN_LOG_SCALE = -7.0
# And a ceiling, so that 1/s never underflows: at s = e^7 ~ 1100 the density is flat over [-1, 1].
LOGISTIC_MAX_LOG_SCALE = 7.0
BIN_HALF_WIDTH = 1.0 / 255.0  # 8-bit pixel k sits at k / 127.5 - 1; its bin is that +- 1/255


def _log_sigmoid(a: jax.Array) -> jax.Array:
    return -jax.nn.softplus(-a)


@struct.dataclass
class DiscretizedLogisticMixture:
    """p(x) for 8-bit values x in [-1, 1]: a mixture of K logistics, each integrated over x's bin.

    Each value has its own K weights, means and log-scales (PixelCNN++ / VDVAE share the weights over
    a pixel's channels and couple the channels autoregressively; this decoder is not autoregressive,
    so every value is independent given z and `log_prob` keeps x's shape). Pixel k's bin is
    [x - 1/255, x + 1/255]; the edge bins take the tails: P(-1) = F(-1 + 1/255), P(1) = 1 - F(1 - 1/255).
    So the 256 probabilities sum to 1 exactly, and -log p(x|z) is a discrete NLL in nats.

    Shapes: logits, mean, log_scale are (..., K); x is (...,). K = 1 is the plain discretized logistic.
    """

    logits: jax.Array
    means: jax.Array
    log_scales: jax.Array

    @classmethod
    def from_raw(cls, logits: jax.Array, means: jax.Array, raw_log_scales: jax.Array) -> DiscretizedLogisticMixture:
        """Floor the log-scales at LOGISTIC_MIN_LOG_SCALE, as VDVAE does (and cap them at the ceiling)."""
        f32 = lambda a: a.astype(jnp.promote_types(a.dtype, jnp.float32))  # bf16 -> fp32; fp64 stays
        log_scales = jnp.clip(f32(raw_log_scales), LOGISTIC_MIN_LOG_SCALE, LOGISTIC_MAX_LOG_SCALE)
        return cls(f32(logits), f32(means), log_scales)

    def _log_probs(self, x: jax.Array) -> jax.Array:
        """(...,) -> (..., K): log P_k(bin of x) per component, stably for every scale.

        With a = (x + h - mu)/s and b = (x - h - mu)/s, P = sigmoid(a) - sigmoid(b)
        = sigmoid(a) sigmoid(-b) (1 - e^(b - a)), so log P = log sigmoid(a) + log sigmoid(-b)
        + log(-expm1(-2h/s)): no cancellation, however small the bin's mass (no PixelCNN++ fallback needed).
        """
        x = x.astype(self.means.dtype)[..., None]
        inv_s = jnp.exp(-self.log_scales)
        a = (x + BIN_HALF_WIDTH - self.means) * inv_s
        b = (x - BIN_HALF_WIDTH - self.means) * inv_s
        bottom, top = x < -1.0 + BIN_HALF_WIDTH, x > 1.0 - BIN_HALF_WIDTH
        log_upper = jnp.where(top, 0.0, _log_sigmoid(a))  # log F(x + h), 1 at the top edge
        log_lower_c = jnp.where(bottom, 0.0, _log_sigmoid(-b))  # log (1 - F(x - h)), 1 at the bottom edge
        width = jnp.where(top | bottom, 0.0, jnp.log(-jnp.expm1(-2.0 * BIN_HALF_WIDTH * inv_s)))
        return log_upper + log_lower_c + width

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Elementwise log P(x) with x's shape: logsumexp_k (log pi_k + log P_k(bin of x))."""
        log_pi = jax.nn.log_softmax(self.logits, axis=-1)
        return jax.nn.logsumexp(log_pi + self._log_probs(x), axis=-1)

    @property
    def probs(self) -> jax.Array:
        return jax.nn.softmax(self.logits, axis=-1)

    @property
    def mean(self) -> jax.Array:
        """The mixture's mean (each component's mean clipped into [-1, 1]), as an image."""
        return jnp.sum(self.probs * jnp.clip(self.means, -1.0, 1.0), axis=-1)

    @property
    def var(self) -> jax.Array:
        comp_var = jnp.exp(2.0 * self.log_scales) * (math.pi**2 / 3.0)  # a logistic's variance
        second = jnp.sum(self.probs * (comp_var + jnp.square(self.means)), axis=-1)
        return jnp.maximum(second - jnp.square(jnp.sum(self.probs * self.means, axis=-1)), 0.0)

    @property
    def std(self) -> jax.Array:
        return jnp.sqrt(self.var)

    def sample(self, key: jax.Array, temperature: float = 1.0) -> jax.Array:
        """A draw on the 8-bit grid: a component by its weight, a logistic by inverse CDF with the scale
        times temperature, then rounded to the nearest bin centre and clipped to [-1, 1]."""
        k_comp, k_u = jax.random.split(key)
        pick = jax.random.categorical(k_comp, self.logits, axis=-1)[..., None]  # (..., 1)
        mu = jnp.take_along_axis(self.means, pick, axis=-1)[..., 0]
        s = jnp.exp(jnp.take_along_axis(self.log_scales, pick, axis=-1)[..., 0]) * temperature
        u = jax.random.uniform(k_u, mu.shape, jnp.float32, 1e-6, 1.0 - 1e-6)
        x = mu + s * (jnp.log(u) - jnp.log1p(-u))
        return jnp.clip(jnp.round((x + 1.0) * 127.5) / 127.5 - 1.0, -1.0, 1.0)
