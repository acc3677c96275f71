"""Bernoulli and decoder-scale likelihoods, KL warm-up and free bits, against closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxvae.config import Config, ConfigError, expand_decoder_std
from jaxvae.distributions import Bernoulli, DiagonalGaussian
from jaxvae.losses import dequantize, free_bits_kl, kl_weight, negative_elbo_terms, vae_loss
from jaxvae.model import build, count_params

# One compilation each instead of an eager dispatch (and compilation) per operation.
negative_elbo_terms = nnx.jit(negative_elbo_terms)
vae_loss = nnx.jit(vae_loss, static_argnames="free_bits")


def bernoulli_log_prob_f64(logits, t):
    """t log sigmoid(l) + (1 - t) log sigmoid(-l) in float64, via log1p(exp(-|l|)) to stay exact."""
    logits = np.asarray(logits, np.float64)
    log_sig = lambda v: -np.logaddexp(0.0, -v)
    return t * log_sig(logits) + (1 - t) * log_sig(-logits)


def test_bernoulli_log_prob_matches_closed_form_even_for_extreme_logits():
    logits = np.array([-200.0, -80.0, -20.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0, 80.0, 200.0], np.float32)
    for t in (0.0, 1.0, 0.3):
        got = np.asarray(Bernoulli(jnp.asarray(logits)).log_prob(jnp.full(logits.shape, t)))
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, bernoulli_log_prob_f64(logits, t), rtol=1e-6, atol=1e-6)
    # The right side of a confident logit costs ~0 nats, the wrong side ~|logit| nats.
    assert float(Bernoulli(jnp.asarray(80.0)).log_prob(jnp.asarray(1.0))) == pytest.approx(0.0, abs=1e-6)
    assert float(Bernoulli(jnp.asarray(80.0)).log_prob(jnp.asarray(0.0))) == pytest.approx(-80.0, rel=1e-6)


def test_bernoulli_on_minus_one_one_support():
    logits = jnp.asarray([-1.0, 0.0, 2.0])
    d = Bernoulli(logits, -1.0, 1.0)
    p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    np.testing.assert_allclose(np.asarray(d.log_prob(jnp.ones(3))), np.log(p), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(d.log_prob(-jnp.ones(3))), np.log1p(-p), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(d.mean), 2 * p - 1, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(d.std), 2 * np.sqrt(p * (1 - p)), rtol=1e-6)
    draws = np.asarray(d.sample(jax.random.key(0)))
    assert set(np.unique(draws)) <= {-1.0, 1.0}


def test_bernoulli_vae_nll_is_the_summed_binary_cross_entropy():
    c = Config(arch="mlp", data_dim=5, z_dim=2, hidden=8, depth=1, likelihood="bernoulli")
    model = build(c)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (3, 5)), jnp.float32)
    nll, kl, aux = negative_elbo_terms(model, x, jax.random.key(1))
    assert isinstance(aux["p"], Bernoulli) and aux["p"].low == 0.0
    expect = -bernoulli_log_prob_f64(aux["p"].logits, np.asarray(x)).sum(axis=1)
    np.testing.assert_allclose(np.asarray(nll), expect, rtol=1e-5)
    assert kl.shape == (3,)


def test_decoder_scale_choices():
    base = Config(arch="mlp", data_dim=5, z_dim=2, hidden=8, depth=1, decoder_scale="log_std")
    z = jnp.ones((3, 2))
    per_dim = build(base).decode(z)  # sigma predicted from z, one per output dim
    assert per_dim.log_std.shape == (3, 5)
    shared_model = build(base.replace(decoder_scale_sharing="shared"))
    shared = shared_model.decode(z)
    assert np.all(np.asarray(shared.log_std) == 0.0)  # one learned scalar, initialised at sigma = 1
    assert count_params(build(base)) - count_params(shared_model) == 8 * 5 + 5 - 1  # per-dim head -> 1 scalar
    fixed = build(base.replace(decoder_variance="fixed", decoder_std=0.25)).decode(z)
    np.testing.assert_allclose(np.asarray(fixed.std), 0.25, rtol=1e-6)
    linear = build(base.replace(arch="linear")).decode(z)  # a free sigma per dim, independent of z
    assert linear.log_std.shape == (3, 5) and np.all(np.asarray(linear.log_std) == 0.0)


def test_decoder_std_shorthand_on_the_command_line():
    assert expand_decoder_std(["--decoder-std", "shared", "--z-dim", "3"]) == [
        "--decoder-variance", "learned", "--decoder-scale-sharing", "shared", "--z-dim", "3"]
    assert expand_decoder_std(["--decoder-std=per-dim"]) == [
        "--decoder-variance", "learned", "--decoder-scale-sharing", "per-dim"]
    assert expand_decoder_std(["--decoder-std", "fixed", "--decoder-std", "0.3"]) == [
        "--decoder-variance", "fixed", "--decoder-std", "0.3"]
    assert expand_decoder_std(["--decoder-std", "0.5"]) == ["--decoder-std", "0.5"]


@pytest.mark.parametrize("changes, message", [
    ({"arch": "cnn"}, "unknown arch"),
    ({"likelihood": "poisson"}, "unknown likelihood"),
    ({"decoder_scale_sharing": "per-pixel"}, "unknown decoder_scale_sharing"),
    ({"free_bits": -1.0}, "free_bits"),
    ({"kl_warmup_steps": -5}, "kl_warmup_steps"),
    ({"data_dim": 4}, "vector data"),  # with the transformer
    ({"arch": "mlp", "data_dim": 4, "dequantize": True}, "dequantize"),
    ({"likelihood": "bernoulli", "dequantize": True}, "dequantize"),
])
def test_bad_settings_name_the_problem(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config(**changes)


def test_kl_weight_ramps_linearly_from_zero():
    values = [float(kl_weight(jnp.asarray(s), 2.0, 100)) for s in (0, 25, 50, 100, 1000)]
    assert values == pytest.approx([0.0, 0.5, 1.0, 2.0, 2.0])
    assert float(kl_weight(jnp.asarray(0), 2.0, 0)) == 2.0  # no warm-up


def test_free_bits_clamps_the_batch_mean_per_dim():
    kl = jnp.asarray([[0.1, 2.0, 0.0], [0.3, 4.0, 0.2]])  # (B=2, Z=3): dim means 0.2, 3.0, 0.1
    assert float(free_bits_kl(kl, 0.5)) == pytest.approx(0.5 + 3.0 + 0.5)
    assert float(free_bits_kl(kl, 0.0)) == pytest.approx(3.3)
    grad = np.asarray(jax.grad(free_bits_kl)(kl, 0.5))
    np.testing.assert_allclose(grad, [[0.0, 0.5, 0.0], [0.0, 0.5, 0.0]])  # no push below lambda


def test_vae_loss_with_free_bits_and_beta():
    c = Config(arch="linear", data_dim=4, z_dim=3)
    model = build(c)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)
    key = jax.random.key(0)
    nll, kl, aux = negative_elbo_terms(model, x, key)
    loss, m = vae_loss(model, x, key, 0.5, free_bits=0.2)
    kl_term = np.maximum(np.asarray(aux["q"].kl_to_standard_normal()).mean(axis=0), 0.2).sum()
    assert float(loss) == pytest.approx(float(jnp.mean(nll)) + 0.5 * kl_term, rel=1e-5)
    assert float(m["kl_objective"]) == pytest.approx(kl_term, rel=1e-5)
    assert float(m["kl_loss"]) == pytest.approx(float(jnp.mean(kl)), rel=1e-6)
    assert float(m["beta"]) == 0.5
    plain, m0 = vae_loss(model, x, key, 1.0)
    assert float(plain) == pytest.approx(float(jnp.mean(nll + kl)), rel=1e-6)


def test_dequantize_adds_less_than_one_pixel_level():
    x = jnp.asarray(np.arange(256, dtype=np.float32) / 127.5 - 1.0)
    noisy = np.asarray(dequantize(jnp.tile(x, (64, 1)), jax.random.key(0)))
    levels = (noisy + 1.0) * 127.5  # back in 0..256 units: k + u
    u = levels - np.arange(256)
    assert u.min() >= -1e-4 and u.max() < 1 + 1e-4
    assert abs(u.mean() - 0.5) < 0.02


def test_train_step_logs_beta_and_uses_free_bits():
    from jaxvae.step import init_state, make_train_step

    c = Config(arch="linear", data_dim=4, z_dim=2, batch_size=8, beta=2.0, kl_warmup_steps=4, free_bits=0.1)
    graphdef, state = init_state(c)
    step = make_train_step(graphdef, c)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    betas = []
    for _ in range(6):
        state, m = step(state, x)
        betas.append(float(m["beta"]))
        assert float(m["kl_objective"]) >= 0.1 * c.z_dim - 1e-6
    assert betas == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])


def test_diagonal_gaussian_and_bernoulli_share_method_names():
    """Losses, sampling and evaluation call the same five names on either; each gives its own closed form
    (N(0, 1) and a fair coin on {0, 1})."""
    cases = ((DiagonalGaussian(jnp.zeros(2), jnp.zeros(2)), 0.0, 1.0, 1.0, -0.5 * np.log(2 * np.pi)),
             (Bernoulli(jnp.zeros(2)), 0.5, 0.5, 0.25, np.log(0.5)))
    for d, mean, std, var, log_prob_at_0 in cases:
        np.testing.assert_allclose(d.mean, [mean, mean], rtol=1e-6)
        np.testing.assert_allclose(d.std, [std, std], rtol=1e-6)
        np.testing.assert_allclose(d.var, [var, var], rtol=1e-6)
        np.testing.assert_allclose(d.log_prob(jnp.zeros(2)), [log_prob_at_0] * 2, rtol=1e-6)
        draws = np.asarray(jax.vmap(d.sample)(jax.random.split(jax.random.key(0), 4000)))  # (4000, 2)
        assert draws.shape == (4000, 2)
        assert abs(draws.mean() - mean) < 0.05 and abs(draws.var() - var) < 0.05
