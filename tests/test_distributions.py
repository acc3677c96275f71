"""DiagonalGaussian against float64 closed forms, a Monte-Carlo KL, and the chapter's two bugs."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvae.distributions import PARAMETERIZATIONS, SOFTPLUS_FLOOR, DiagonalGaussian


def sigma_f64(raw: np.ndarray, parameterization: str) -> np.ndarray:
    raw = np.asarray(raw, np.float64)
    if parameterization == "log_var":
        return np.exp(raw / 2)
    if parameterization == "log_std":
        return np.exp(raw)
    return np.log1p(np.exp(raw)) + SOFTPLUS_FLOOR


RNG = np.random.default_rng(0)
MEAN = RNG.normal(size=(4, 7)).astype(np.float32)
RAW = RNG.uniform(-2, 2, size=(4, 7)).astype(np.float32)
X = RNG.normal(size=(4, 7)).astype(np.float32)


@pytest.mark.parametrize("p", PARAMETERIZATIONS)
def test_scale_properties_match_closed_form(p):
    d = DiagonalGaussian.from_raw(jnp.asarray(MEAN), jnp.asarray(RAW), p)
    sigma = sigma_f64(RAW, p)
    np.testing.assert_allclose(d.std, sigma, rtol=1e-5)
    np.testing.assert_allclose(d.var, sigma**2, rtol=1e-5)
    np.testing.assert_allclose(d.log_std, np.log(sigma), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(d.mean, MEAN)


@pytest.mark.parametrize("p", PARAMETERIZATIONS)
def test_log_prob_is_the_exact_gaussian_density(p):
    d = DiagonalGaussian.from_raw(jnp.asarray(MEAN), jnp.asarray(RAW), p)
    s = sigma_f64(RAW, p)
    expected = -0.5 * np.log(2 * np.pi) - np.log(s) - (X - MEAN.astype(np.float64)) ** 2 / (2 * s**2)
    np.testing.assert_allclose(d.log_prob(jnp.asarray(X)), expected, rtol=1e-5, atol=1e-5)
    # and it integrates to one (trapezoid over a wide grid, one dimension)
    grid = np.linspace(-40, 40, 400_001, dtype=np.float32)
    one = DiagonalGaussian.from_raw(jnp.float32(0.3), jnp.float32(0.4), p)
    assert abs(np.trapezoid(np.exp(np.asarray(one.log_prob(grid), np.float64)), grid) - 1) < 1e-4


@pytest.mark.parametrize("p", PARAMETERIZATIONS)
def test_kl_closed_form_and_monte_carlo(p):
    d = DiagonalGaussian.from_raw(jnp.asarray(MEAN), jnp.asarray(RAW), p)
    s = sigma_f64(RAW, p)
    closed = 0.5 * (s**2 + MEAN.astype(np.float64) ** 2 - 1 - np.log(s**2))
    np.testing.assert_allclose(d.kl_to_standard_normal(), closed, rtol=1e-5, atol=1e-6)
    # Monte Carlo: KL = E_q[log q(z) - log N(z; 0, 1)], with samples from .sample itself, so
    # sampling and KL are checked to read the same scale.
    keys = jax.random.split(jax.random.key(1), 20_000)
    z = jax.vmap(d.sample)(keys)  # (K, 4, 7)
    prior = DiagonalGaussian(mean=jnp.zeros_like(z), log_std=jnp.zeros_like(z))
    d_k = DiagonalGaussian(d.mean[None], d.log_std[None])  # (1, 4, 7): ranks match z's, as the tests demand
    mc = np.mean(np.asarray(d_k.log_prob(z) - prior.log_prob(z), np.float64), axis=0)
    se = np.std(np.asarray(d_k.log_prob(z) - prior.log_prob(z), np.float64), axis=0) / math.sqrt(len(keys))
    assert np.all(np.abs(mc - closed) < 5 * se + 1e-3)


def test_parameterizations_describe_the_same_distribution():
    log_sigma = jnp.asarray(RAW) / 3
    a = DiagonalGaussian.from_raw(jnp.asarray(MEAN), 2 * log_sigma, "log_var")
    b = DiagonalGaussian.from_raw(jnp.asarray(MEAN), log_sigma, "log_std")
    np.testing.assert_allclose(a.std, b.std, rtol=1e-6)
    np.testing.assert_allclose(a.kl_to_standard_normal(), b.kl_to_standard_normal(), rtol=1e-6)
    np.testing.assert_allclose(a.log_prob(jnp.asarray(X)), b.log_prob(jnp.asarray(X)), rtol=1e-6)


def test_the_chapters_kl_disagrees_with_its_own_sampling():
    """The chapter samples z = mean + exp(log_std) * eps but computes the KL as
    1/2 (exp(log_std) + mean^2 - 1 - log_std), i.e. reads log_std as a log-variance. Against the
    distribution it actually samples from, that KL is wrong; ours is right."""
    mean, raw = jnp.asarray([0.5]), jnp.asarray([1.0])  # log_std = 1
    chapter_kl = 0.5 * (jnp.exp(raw) + mean**2 - 1 - raw)
    ours = DiagonalGaussian.from_raw(mean, raw, "log_std")
    sigma = math.e
    truth = 0.5 * (sigma**2 + 0.25 - 1 - 2 * 1.0)
    np.testing.assert_allclose(ours.kl_to_standard_normal(), [truth], rtol=1e-6)
    assert abs(float(chapter_kl[0]) - truth) > 1.0


def test_the_chapters_reconstruction_term_halves_log_sigma():
    """The chapter's NLL is 1/2 [((x-mu)/sigma)^2 + log sigma]: log sigma is halved, so it rewards
    a decoder sigma that is too large. The exact NLL's optimum over sigma is |x - mu|; the
    chapter's is sqrt(2) |x - mu|."""
    x, mu = 1.0, 0.0
    log_sigmas = jnp.linspace(-2, 2, 40_001)
    ours = -DiagonalGaussian(mean=jnp.full_like(log_sigmas, mu), log_std=log_sigmas).log_prob(x)
    chapter = 0.5 * (((x - mu) / jnp.exp(log_sigmas)) ** 2 + log_sigmas)
    assert abs(float(jnp.exp(log_sigmas[jnp.argmin(ours)])) - 1.0) < 1e-3
    assert abs(float(jnp.exp(log_sigmas[jnp.argmin(chapter)])) - math.sqrt(2)) < 1e-3


@settings(max_examples=60, deadline=None)
@given(raw=st.floats(-30, 30), mean=st.floats(-30, 30), x=st.floats(-30, 30),
       p=st.sampled_from(PARAMETERIZATIONS))
def test_finite_for_raw_up_to_30(raw, mean, x, p):
    d = DiagonalGaussian.from_raw(jnp.float32(mean), jnp.float32(raw), p)
    values = [d.std, d.var, d.log_std, d.log_prob(jnp.float32(x)), d.kl_to_standard_normal(),
              d.sample(jax.random.key(0))]
    assert all(np.isfinite(np.asarray(v)).all() for v in values)


FLOAT32_MAX = float(np.finfo(np.float32).max)


@settings(max_examples=200, deadline=None)
@given(raw=st.floats(-FLOAT32_MAX, FLOAT32_MAX, width=32), mean=st.floats(-1e3, 1e3, width=32),
       x=st.floats(-1e3, 1e3, width=32), p=st.sampled_from(PARAMETERIZATIONS))
def test_finite_for_every_finite_raw_scale_with_gradients(raw, mean, x, p):
    """Any finite float32 raw output: every method and its gradients in (mean, raw) are finite,
    also at x == mean (where an unbounded log sigma of -100 made 0 * inf = NaN)."""
    values, grads = _methods_and_gradients(jnp.float32(mean), jnp.float32(raw), jnp.float32(x), p)
    assert np.isfinite(np.asarray(values)).all(), values
    assert all(np.isfinite(np.asarray(g)).all() for g in grads), grads


def _methods(m, r, x, p):
    d = DiagonalGaussian.from_raw(m, r, p)
    return jnp.stack([d.std, d.var, d.log_std, d.log_prob(x), d.log_prob(m), d.kl_to_standard_normal(),
                      d.sample(jax.random.key(0))])


@functools.partial(jax.jit, static_argnums=3)
def _methods_and_gradients(m, r, x, p):
    """(7,) values of std, var, log_std, log_prob(x), log_prob(mean), KL, a sample; (7,) d/dmean, (7,) d/draw."""
    return _methods(m, r, x, p), jax.jacrev(_methods, argnums=(0, 1))(m, r, x, p)


@pytest.mark.parametrize("p", PARAMETERIZATIONS)
def test_log_prob_at_the_mean_with_a_tiny_raw_scale(p):
    d = DiagonalGaussian.from_raw(jnp.float32(0.5), jnp.float32(-100.0), p)
    sigma = math.exp(float(d.log_std))
    assert float(d.log_prob(jnp.float32(0.5))) == pytest.approx(-0.5 * math.log(2 * math.pi) - math.log(sigma),
                                                                rel=1e-6)


def test_the_soft_clamp_is_the_identity_inside_and_bends_smoothly_outside():
    from jaxvae.distributions import soft_clamp_log_std

    inside = jnp.linspace(-20.0, 20.0, 4001)
    np.testing.assert_array_equal(soft_clamp_log_std(inside), inside)  # bitwise: trained models are unchanged
    outside = jnp.asarray([20.5, 25.0, 44.0, 1e4, 3e38])
    bent = np.asarray(soft_clamp_log_std(outside), np.float64)
    np.testing.assert_allclose(bent[:3], 20 + 10 * np.tanh((np.asarray([20.5, 25.0, 44.0]) - 20) / 10), rtol=1e-6)
    assert np.all(np.diff(bent) >= 0) and np.all(bent <= 30.0)
    np.testing.assert_allclose(soft_clamp_log_std(-outside), -soft_clamp_log_std(outside))
    slope = jax.vmap(jax.grad(soft_clamp_log_std))(jnp.asarray([19.999, 20.0, 20.001, -20.001]))
    np.testing.assert_allclose(slope, 1.0, atol=1e-3)  # no kink where the identity ends


@pytest.mark.parametrize("p", PARAMETERIZATIONS)
def test_gradients_flow_through_the_reparameterized_sample(p):
    eps = jax.random.normal(jax.random.key(3), (5,))

    def f(mean, raw):
        return jnp.sum(DiagonalGaussian.from_raw(mean, raw, p).sample(jax.random.key(3)))

    mean, raw = jnp.zeros(5), jnp.full(5, 0.3)
    g_mean, g_raw = jax.grad(f, argnums=(0, 1))(mean, raw)
    np.testing.assert_allclose(g_mean, np.ones(5), rtol=1e-6)
    dsigma_draw = {"log_var": 0.5 * np.exp(0.15), "log_std": np.exp(0.3), "softplus": 1 / (1 + np.exp(-0.3))}[p]
    np.testing.assert_allclose(g_raw, dsigma_draw * np.asarray(eps), rtol=1e-5)


def test_unknown_parameterization_is_refused():
    with pytest.raises(ValueError, match="unknown parameterization"):
        DiagonalGaussian.from_raw(jnp.zeros(2), jnp.zeros(2), "std")
