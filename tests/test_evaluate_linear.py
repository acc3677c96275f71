"""The estimators against a model whose log-likelihood is known in closed form.

A linear VAE with a shared learned sigma is probabilistic PCA (Tipping & Bishop 1999):
z ~ N(0, I), x | z ~ N(W z + mu, sigma^2 I), so log p(x) = log N(x; mu, W W^T + sigma^2 I) exactly,
and the true posterior is N(M^-1 W^T (x - mu), sigma^2 M^-1), M = W^T W + sigma^2 I, which is diagonal
(so a VAE's encoder can reach it) when W's columns are orthogonal, as pPCA's ML solution's are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxvae.config import Config
from jaxvae.evaluation import evaluate
from jaxvae.losses import vae_loss
from jaxvae.model import build


def linear_config(d: int, z: int) -> Config:
    return Config(arch="linear", data_dim=d, z_dim=z, decoder_scale_sharing="shared", decoder_scale="log_std",
                  posterior_scale="log_std", beta=1.0)


def set_linear(model, w, mu, sigma, a, b, log_std) -> None:
    """Decoder x = W z + mu with sigma; encoder mean = A x + b, log std = log_std (constant in x)."""
    z = w.shape[1]
    model.decoder.embed.kernel[...] = jnp.asarray(w.T, jnp.float32)  # (Z, D)
    model.decoder.embed.bias[...] = jnp.asarray(mu, jnp.float32)
    model.likelihood.raw_scale[...] = jnp.asarray(np.log(sigma), jnp.float32)
    kernel = np.zeros((w.shape[0], 2 * z))  # (D, 2Z): [mean | raw scale]
    kernel[:, :z] = a.T
    model.encoder.head.kernel[...] = jnp.asarray(kernel, jnp.float32)
    model.encoder.head.bias[...] = jnp.asarray(np.concatenate([b, log_std]), jnp.float32)


def exact_log_px(x, w, mu, sigma) -> np.ndarray:
    """(N,) log N(x; mu, W W^T + sigma^2 I) in float64."""
    cov = w @ w.T + sigma**2 * np.eye(len(mu))
    _, logdet = np.linalg.slogdet(cov)
    r = x - mu
    maha = np.einsum("nd,de,ne->n", r, np.linalg.inv(cov), r)
    return -0.5 * (len(mu) * np.log(2 * np.pi) + logdet + maha)


def optimal_encoder(w, mu, sigma):
    """A, b, log std of the true posterior's mean A x + b and its (diagonal part of the) std."""
    m_inv = np.linalg.inv(w.T @ w + sigma**2 * np.eye(w.shape[1]))
    a = m_inv @ w.T
    return a, -a @ mu, 0.5 * np.log(sigma**2 * np.diag(m_inv))


def ppca_data(rng, n, d, eigenvalues, exact_covariance=False):
    """n points with covariance U diag(eigenvalues) U^T around a random mean. With exact_covariance
    the *sample* covariance is exactly that (whitened noise), so pPCA's ML fit is known exactly."""
    g = rng.normal(size=(n, d))
    if exact_covariance:
        g -= g.mean(axis=0)
        g = g @ np.linalg.inv(np.linalg.cholesky(g.T @ g / n)).T
    u = np.linalg.qr(rng.normal(size=(d, d)))[0]
    return g @ np.diag(np.sqrt(eigenvalues)) @ u.T + rng.normal(size=d)


def ppca_ml(x, z):
    """Tipping & Bishop's closed-form ML fit: W = U_z (L_z - sigma^2)^1/2, sigma^2 = mean of the rest."""
    ev, vec = np.linalg.eigh(np.cov(x.T, bias=True))
    ev, vec = ev[::-1], vec[:, ::-1]
    s2 = ev[z:].mean()
    return vec[:, :z] * np.sqrt(np.maximum(ev[:z] - s2, 0.0)), x.mean(axis=0), np.sqrt(s2)


# Every test uses D = 6, Z = 3, N = 512 and K = 100 (or 1000 once), so they share compilations.
D, Z, N = 6, 3, 512


def per_example(model, x, k, c):
    """(-ELBO, IWAE_K) per example and the whole result."""
    r = evaluate(model, x.astype(np.float32), k, config=c, per_example=True, seed=1)
    return -np.array(r["per_example"]["negative_elbo"]), np.array(r["per_example"]["iwae"]), r


def paired(a, b):
    """mean and standard error of a - b, example by example."""
    diff = a - b
    return diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))


def draw(rng, w, mu, sigma, n=N):
    return rng.normal(size=(n, w.shape[1])) @ w.T + mu + sigma * rng.normal(size=(n, len(mu)))


def test_elbo_below_iwae_below_log_px_and_iwae_rises_with_k():
    rng = np.random.default_rng(0)
    sigma = 0.5
    w, mu = rng.normal(size=(D, Z)), rng.normal(size=D)  # general W: the true posterior is not diagonal
    x = draw(rng, w, mu, sigma)
    c = linear_config(D, Z)
    model = build(c)
    a, b, log_std = optimal_encoder(w, mu, sigma)
    set_linear(model, w, mu, sigma, 0.7 * a, 0.7 * b, log_std + 0.5)  # a deliberately poor encoder
    log_px = exact_log_px(x, w, mu, sigma)
    elbo, _, r = per_example(model, x, 1000, c)
    iwae = {int(k): np.array(v) for k, v in r["per_example"]["iwae_by_k"].items()}
    assert sorted(iwae) == [1, 10, 100, 1000]

    gap_elbo, se = paired(log_px, elbo)
    assert gap_elbo > 5 * se > 0  # the poor encoder leaves a real gap
    diff, se = paired(iwae[1], elbo)  # K = 1 is a (differently estimated) ELBO
    assert abs(diff) < 4 * se
    gaps = [np.mean(log_px - iwae[k]) for k in (1, 10, 100, 1000)]
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]  # rising with K towards log p(x)
    for small, large in ((1, 10), (10, 100)):
        rise, se = paired(iwae[large], iwae[small])
        assert rise > 3 * se, (small, large, rise, se)
    excess, se = paired(iwae[1000], log_px)  # still a lower bound, up to Monte Carlo error
    assert excess < 3 * se
    assert gaps[3] < 0.05 * gap_elbo  # K = 1000 closes most of the ELBO's gap


def test_exact_posterior_makes_every_importance_weight_equal_log_px():
    """At the encoder's optimum log p(x, z) - log q(z|x) = log p(x) for every z: zero variance."""
    rng = np.random.default_rng(1)
    sigma = 0.3
    w = np.linalg.qr(rng.normal(size=(D, Z)))[0] * np.array([3.0, 2.0, 0.5])  # orthogonal columns
    mu = rng.normal(size=D)
    x = draw(rng, w, mu, sigma)
    c = linear_config(D, Z)
    model = build(c)
    set_linear(model, w, mu, sigma, *optimal_encoder(w, mu, sigma))
    elbo, iwae, _ = per_example(model, x, 100, c)
    log_px = exact_log_px(x, w, mu, sigma)
    np.testing.assert_allclose(iwae, log_px, atol=2e-3)  # float32 sums of ~10-nat terms
    gap, se = paired(log_px, elbo)  # the ELBO's reconstruction term is still a Monte Carlo average
    assert abs(gap) < 4 * se and se < 0.02


@pytest.fixture(scope="module")
def trained_encoder():
    """pPCA data with 2 signal directions in 6 dims; a linear VAE with Z = 3 whose decoder is pPCA's ML
    fit (where linear-VAE training converges, Lucas et al. 2019: two signal columns and one exactly
    zero) and whose encoder starts random and is trained on the ELBO with jaxvae's loss."""
    rng = np.random.default_rng(2)
    x = ppca_data(rng, N, D, [9.0, 4.0, 0.25, 0.25, 0.25, 0.25], exact_covariance=True)
    w, mu, sigma = ppca_ml(x, Z)
    c = linear_config(D, Z)
    model = build(c)
    set_linear(model, w, mu, sigma, np.zeros((Z, D)), np.zeros(Z), np.zeros(Z))
    model.encoder.head.kernel[...] = 0.3 * jax.random.normal(jax.random.key(5), (D, 2 * Z))
    graphdef, encoder, rest = nnx.split(model, nnx.PathContains("encoder"), ...)
    steps = 4000
    tx = optax.adam(optax.cosine_decay_schedule(0.1, steps, alpha=0.001))
    xs = jnp.asarray(x, jnp.float32)

    @jax.jit
    def train(encoder):
        def step(carry, i):
            enc, opt = carry
            loss = lambda e: vae_loss(nnx.merge(graphdef, e, rest), xs, jax.random.key(i), 1.0)[0]
            updates, opt = tx.update(jax.grad(loss)(enc), opt, enc)
            return (optax.apply_updates(enc, updates), opt), None

        return jax.lax.scan(step, (encoder, tx.init(encoder)), jnp.arange(steps))[0][0]

    start = nnx.merge(graphdef, encoder, rest)
    trained = nnx.merge(graphdef, train(encoder), rest)
    return c, x, (w, mu, sigma), start, trained


def kl_to_true_posterior(model, x, w, mu, sigma) -> np.ndarray:
    """(N,) KL(q(z|x) || p(z|x)) in closed form: exactly log p(x) - ELBO, no Monte Carlo."""
    kernel = np.asarray(model.encoder.head.kernel[...], np.float64)
    bias = np.asarray(model.encoder.head.bias[...], np.float64)
    out = x @ kernel + bias
    m_q, var_q = out[:, :Z], np.exp(2 * out[:, Z:])  # (N, Z) each
    a, b, _ = optimal_encoder(w, mu, sigma)
    m_p = x @ a.T + b
    cov_p = sigma**2 * np.linalg.inv(w.T @ w + sigma**2 * np.eye(Z))
    prec_p = np.linalg.inv(cov_p)
    r = m_p - m_q
    return 0.5 * (var_q @ np.diag(prec_p) + np.einsum("nz,zy,ny->n", r, prec_p, r) - Z
                  + np.linalg.slogdet(cov_p)[1] - np.log(var_q).sum(axis=1))


def test_trained_encoder_makes_the_elbo_tight(trained_encoder):
    c, x, (w, mu, sigma), start, trained = trained_encoder
    log_px = exact_log_px(x, w, mu, sigma)
    assert np.mean(kl_to_true_posterior(start, x, w, mu, sigma)) > 1.0  # the random encoder's gap
    exact_gap = kl_to_true_posterior(trained, x, w, mu, sigma)
    assert np.all(exact_gap >= 0) and np.mean(exact_gap) < 0.005
    elbo, iwae, _ = per_example(trained, x, 1000, c)
    gap, se = paired(log_px, elbo)  # the estimator sees the same (vanishing) gap
    assert abs(gap - np.mean(exact_gap)) < 4 * se and se < 0.005, (gap, se)
    assert abs(np.mean(log_px - iwae)) < 0.002


def test_active_units_count_the_signal_dimensions(trained_encoder):
    c, x, _, _, trained = trained_encoder
    r = evaluate(trained, x.astype(np.float32), 100, config=c)
    assert r["active_units"] == 2
    activity = np.sort(r["latent_activity"])
    assert activity[0] < 1e-3 and activity[1] > 0.5  # far from the 0.01 line
    # The collapsed dim carries no KL; the two signal dims carry all of it.
    assert r["kl_per_dim"][-1] < 0.01 and min(r["kl_per_dim"][:2]) > 0.5
    assert r["kl_per_dim_index"][-1] == int(np.argmin(r["latent_activity"]))


def test_active_units_on_a_known_decoder():
    """Signal in exactly 2 of 3 latent dims by construction: the middle one has a zero column."""
    rng = np.random.default_rng(3)
    sigma = 0.5
    w = np.zeros((D, Z))
    w[:, [0, 2]] = np.linalg.qr(rng.normal(size=(D, 2)))[0] * np.array([2.0, 1.0])
    mu = rng.normal(size=D)
    c = linear_config(D, Z)
    model = build(c)
    set_linear(model, w, mu, sigma, *optimal_encoder(w, mu, sigma))
    r = evaluate(model, draw(rng, w, mu, sigma).astype(np.float32), 100, config=c)
    assert r["active_units"] == 2
    assert set(r["kl_per_dim_index"][:2]) == {0, 2}
