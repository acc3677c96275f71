"""The discretized logistic (mixture) likelihood against float64 integrals of the logistic density."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvae.config import ConfigError
from jaxvae.distributions import LOGISTIC_MAX_LOG_SCALE, LOGISTIC_MIN_LOG_SCALE, DiscretizedLogisticMixture
from jaxvae.likelihoods import values_per_output
from jaxvae.model import build

BINS = np.arange(256) / 127.5 - 1.0  # the 8-bit values in [-1, 1]


def logistic_cdf(x, mu, s):
    return 1.0 / (1.0 + np.exp(-(x - mu) / s))


def bin_probability_by_integration(k: int, mu: float, s: float, n: int = 20001) -> float:
    """Simpson's rule over bin k's interval of the logistic density (an edge bin's tail is cut 40 scales
    beyond the mean, where its mass is e^-40)."""
    lo = min(-1.0, mu) - 40 * s if k == 0 else BINS[k] - 1 / 255
    hi = max(1.0, mu) + 40 * s if k == 255 else BINS[k] + 1 / 255
    t = np.linspace(lo, hi, n)
    z = np.exp(-np.abs(t - mu) / s)
    pdf = z / (s * (1 + z) ** 2)
    h = (hi - lo) / (n - 1)
    return float(h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum()))


def mixture(logits, means, log_scales) -> DiscretizedLogisticMixture:
    return DiscretizedLogisticMixture.from_raw(jnp.asarray(logits), jnp.asarray(means), jnp.asarray(log_scales))


@pytest.mark.parametrize("mu, log_s", [(0.0, -2.0), (-0.97, -4.0), (0.5, 0.3), (1.3, -6.0), (-3.0, 1.0)])
def test_each_bin_matches_the_integral_of_the_density(mu, log_s):
    with jax.enable_x64(True):
        d = mixture(np.zeros((256, 1)), np.full((256, 1), mu), np.full((256, 1), log_s))
        got = np.exp(np.asarray(d.log_prob(jnp.asarray(BINS)), np.float64))
    s = np.exp(max(log_s, LOGISTIC_MIN_LOG_SCALE))
    want = np.array([bin_probability_by_integration(k, mu, s) for k in range(256)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    # ... and the CDF differences directly, which the integral approximates (above the mean, differences of
    # the survival function 1 - F, which float64 holds to full relative precision in the upper tail)
    edges = np.concatenate([[-np.inf], BINS[:-1] + 1 / 255, [np.inf]])
    lo, hi = edges[:-1], edges[1:]
    survival = lambda x: logistic_cdf(-x, -mu, s)  # noqa: E731
    want = np.where(lo > mu, survival(lo) - survival(hi), logistic_cdf(hi, mu, s) - logistic_cdf(lo, mu, s))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)


def test_the_256_bins_sum_to_one_for_every_pixel():
    rng = np.random.default_rng(0)
    pixels, k = 50, 3
    logits, means = rng.normal(size=(pixels, k)), rng.uniform(-1.5, 1.5, (pixels, k))
    log_scales = rng.uniform(-8, 3, (pixels, k))  # below the floor too
    with jax.enable_x64(True):
        d = mixture(logits[:, None], means[:, None], log_scales[:, None])  # (pixels, 1 value, K)
        lp = d.log_prob(jnp.broadcast_to(jnp.asarray(BINS), (pixels, 256)))  # (pixels, 256)
        total = np.exp(np.asarray(jax.nn.logsumexp(lp, axis=1)))
    np.testing.assert_allclose(total, 1.0, rtol=1e-10)


def test_log_prob_has_x_shape_and_sums_to_log_p_x_given_z():
    """For K = 1 per value; log p(x|z) is the sum over the non-batch axes."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.integers(0, 256, (2, 4, 4, 3)) / 127.5 - 1.0, jnp.float32)
    out = jnp.asarray(rng.normal(size=(2, 4, 4, 6)), jnp.float32)  # [mean | log-scale] per value
    head = build(micro_config(likelihood="logistic"))
    p = head.likelihood(out)
    lp = p.log_prob(x)
    assert lp.shape == x.shape
    mu, ls = np.split(np.asarray(out, np.float64), 2, axis=-1)
    s = np.exp(np.maximum(ls, LOGISTIC_MIN_LOG_SCALE))
    xv = np.asarray(x, np.float64)
    upper = np.where(xv > 1 - 1e-3, 1.0, logistic_cdf(xv + 1 / 255, mu, s))
    lower = np.where(xv < -1 + 1e-3, 0.0, logistic_cdf(xv - 1 / 255, mu, s))
    np.testing.assert_allclose(np.asarray(lp), np.log(upper - lower), rtol=2e-4, atol=2e-5)


def test_mixture_of_one_equals_the_single_logistic_and_weights_mix():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.integers(0, 256, (30,)) / 127.5 - 1.0)
    mu, ls = rng.uniform(-1, 1, (30, 1)), rng.uniform(-5, 0, (30, 1))
    with jax.enable_x64(True):
        one = mixture(np.zeros((30, 1)), mu, ls).log_prob(x)
        # K = 2 with the same component twice is the same distribution, whatever the weights
        two = mixture(rng.normal(size=(30, 2)), np.repeat(mu, 2, 1), np.repeat(ls, 2, 1)).log_prob(x)
        np.testing.assert_allclose(np.asarray(one), np.asarray(two), rtol=1e-12)
        # and a mixture is the weighted sum of its components' probabilities
        w = rng.normal(size=(30, 2))
        mu2, ls2 = rng.uniform(-1, 1, (30, 2)), rng.uniform(-5, 0, (30, 2))
        mix = np.exp(np.asarray(mixture(w, mu2, ls2).log_prob(x)))
        pi = np.exp(w) / np.exp(w).sum(1, keepdims=True)
        comps = [np.exp(np.asarray(mixture(np.zeros((30, 1)), mu2[:, j:j + 1], ls2[:, j:j + 1]).log_prob(x)))
                 for j in range(2)]
        np.testing.assert_allclose(mix, pi[:, 0] * comps[0] + pi[:, 1] * comps[1], rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(mu=st.floats(-1e6, 1e6), raw=st.floats(-1e4, 1e4), k=st.integers(0, 255), logit=st.floats(-50, 50))
def test_log_probs_and_gradients_are_finite_for_extreme_means_and_scales(mu, raw, k, logit):
    x = jnp.asarray(BINS[k], jnp.float32)

    def f(params):
        m, r, lg = params
        return mixture(jnp.stack([lg, 0.0]), jnp.stack([m, 0.1]), jnp.stack([r, -1.0])).log_prob(x)

    value, grads = jax.value_and_grad(f)(jnp.asarray([mu, raw, logit], jnp.float32))
    assert np.isfinite(float(value)) and float(value) <= 0.0
    assert np.all(np.isfinite(np.asarray(grads)))


def test_scale_bounds_and_samples_on_the_grid():
    d = mixture(np.zeros((1000, 1)), np.full((1000, 1), 0.2), np.full((1000, 1), -50.0))
    assert float(d.log_scales.min()) == LOGISTIC_MIN_LOG_SCALE
    assert float(mixture(np.zeros(1), np.zeros(1), np.full(1, 50.0)).log_scales[0]) == LOGISTIC_MAX_LOG_SCALE
    x = np.asarray(d.sample(jax.random.key(0)))
    np.testing.assert_allclose((x + 1) * 127.5, np.round((x + 1) * 127.5), atol=1e-4)  # on the 8-bit grid
    # at the floor a bin holds sigmoid(h/s) - sigmoid(-h/s) = 97.3% of the mass around its centre
    assert 0.96 < np.mean(np.abs(x - BINS[153]) < 1e-6) < 0.985
    wide = np.asarray(mixture(np.zeros((20000, 1)), np.zeros((20000, 1)), np.full((20000, 1), -2.0))
                      .sample(jax.random.key(1)))
    s = np.exp(-2.0)
    assert abs(wide.std() - s * np.pi / np.sqrt(3)) < 0.01  # a logistic's std, sigma = s pi / sqrt 3


def test_logistic_head_values_and_config_refusals():
    assert values_per_output(micro_config(likelihood="logistic")) == 2
    assert values_per_output(micro_config(likelihood="logistic", mixtures=5)) == 15
    model = build(micro_config(likelihood="logistic", mixtures=3))
    p = model.decode(jnp.zeros((2, 4)))
    assert p.means.shape == (2, 16, 16, 3, 3) and p.mean.shape == (2, 16, 16, 3)
    for changes, message in [({"mixtures": 0}, "mixtures must be a positive integer"),
                             ({"mixtures": 2}, "--mixtures is for --likelihood logistic"),
                             ({"likelihood": "logistic", "dequantize": True}, "--dequantize is for a gaussian"),
                             ({"likelihood": "logistic", "arch": "mlp", "data_dim": 5}, "not vector data")]:
        with pytest.raises(ConfigError, match=message):
            micro_config(**changes)


def test_evaluate_reports_valid_bits_per_dim_without_dequantization():
    """A discrete likelihood's NLL is already in nats per 8-bit image: bits/dim = NLL / (D ln 2), no offset."""
    from jaxvae.evaluation import evaluate

    c = micro_config(likelihood="logistic", mixtures=2)
    images = np.random.default_rng(3).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    r = evaluate(build(c), images, iw_samples=3, config=c)
    assert r["bits_per_dim_valid_bound"] is True and "discretized logistic" in r["bits_per_dim_note"]
    d = 16 * 16 * 3
    assert r["bits_per_dim"]["mean"] == pytest.approx(-r["iwae"]["mean"] / (d * np.log(2)), rel=1e-6)
    # a near-uniform model at init spends about 8 bits on each 8-bit value
    assert 6.0 < r["bits_per_dim"]["mean"] < 12.0
