"""The objectives (IWAE, beta-TCVAE) and binarization against closed forms and against each other."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config
from scipy.special import logsumexp
from test_evaluate_linear import exact_log_px, linear_config, optimal_encoder, set_linear

from jaxvae import cli, losses
from jaxvae import data as data_lib
from jaxvae.config import ConfigError
from jaxvae.evaluation import evaluate
from jaxvae.losses import negative_elbo_terms, vae_loss
from jaxvae.model import build
from jaxvae.objectives import (
    aggregate_log_density,
    btcvae_loss,
    btcvae_terms,
    importance_log_weights,
    iwae_loss,
    objective_loss,
)
from jaxvae.step import init_state, make_train_step

MICRO_FLAGS = ["--image-size", "16", "--patch-size", "4", "--hidden", "32", "--depth", "1", "--heads", "2",
               "--mlp-ratio", "2", "--z-dim", "4", "--batch-size", "16", "--steps", "2", "--quiet"]


def _batch(c, n=8, seed=0):
    return jnp.asarray(data_lib.to_model_range(data_lib.make_shapes(n, c.image_size, seed=seed)[0]))


# --- IWAE ---------------------------------------------------------------------------------------------

def test_iwae_with_one_sample_is_the_elbo_for_the_same_noise():
    c = micro_config(arch="mlp")
    model, x, key = build(c), _batch(c), jax.random.key(3)
    for beta in (1.0, 4.0):
        loss, m = iwae_loss(model, x, key, 1, beta)
        ref, ref_m = vae_loss(model, x, key, beta)
        assert float(loss) == float(ref) and float(m["kl_loss"]) == float(ref_m["kl_loss"])
    # the general K-sample path at K = 1 draws the same z as the ELBO: the same NLL, and its weight is
    # -(NLL + log q(z|x) - log p(z)), the ELBO with a one-sample KL
    log_w, nll, log_ratio, aux = importance_log_weights(model, x, key, 1)
    nll_elbo, _, elbo_aux = negative_elbo_terms(model, x, key)
    np.testing.assert_allclose(np.asarray(aux["z"][0]), np.asarray(elbo_aux["q"].sample(key)), rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(nll[0]), np.asarray(nll_elbo), rtol=1e-6)
    q = elbo_aux["q"]
    z = np.asarray(q.sample(key), np.float64)
    mean, std = np.asarray(q.mean, np.float64), np.asarray(q.std, np.float64)
    log_q = np.sum(-0.5 * np.log(2 * np.pi) - np.log(std) - 0.5 * ((z - mean) / std) ** 2, axis=1)
    log_p = np.sum(-0.5 * np.log(2 * np.pi) - 0.5 * z**2, axis=1)
    np.testing.assert_allclose(np.asarray(log_w[0]), -(np.asarray(nll_elbo) + log_q - log_p), rtol=1e-5)


def _steps(c, batches):
    graphdef, state = init_state(c)
    step = make_train_step(graphdef, c)
    history = []
    for x in batches:
        state, m = step(state, x)
        history.append({k: float(v) for k, v in m.items() if k in ("loss", "reconstruction_loss", "kl_loss")})
    return state, history


def test_training_with_iwae_k1_logs_the_same_losses_as_elbo():
    c = micro_config(arch="mlp")  # an MLP compiles in a fraction of the transformer's time
    batches = [_batch(c, 16, seed=i) for i in range(3)]
    s1, h1 = _steps(c, batches)
    s2, h2 = _steps(c.replace(objective="iwae", iw_k=1), batches)
    assert h1 == h2
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), s1["params"], s2["params"]))
    _, h3 = _steps(c.replace(objective="iwae", iw_k=4), batches)  # K = 4 is a different (tighter) loss
    assert h3[0]["loss"] < h1[0]["loss"]


# pPCA: z ~ N(0, I), x | z ~ N(W z + mu, sigma^2 I). With W's columns orthogonal the true posterior is
# diagonal, so a linear encoder can be it exactly (see test_evaluate_linear.py).
D, Z = 6, 3


def _ppca(rng, orthogonal: bool):
    w = rng.normal(size=(D, Z))
    if orthogonal:
        w = np.linalg.qr(w)[0] * np.array([2.0, 1.5, 0.7])
    return w, rng.normal(size=D), 0.5


def _draw(rng, w, mu, sigma, n):
    return rng.normal(size=(n, Z)) @ w.T + mu + sigma * rng.normal(size=(n, D))


def test_iwae_weights_are_log_px_under_the_true_posterior():
    rng = np.random.default_rng(0)
    w, mu, sigma = _ppca(rng, orthogonal=True)
    x = _draw(rng, w, mu, sigma, 64)
    model = build(linear_config(D, Z))
    set_linear(model, w, mu, sigma, *optimal_encoder(w, mu, sigma))
    log_w, _, _, _ = importance_log_weights(model, jnp.asarray(x, jnp.float32), jax.random.key(0), 16)
    log_px = exact_log_px(x, w, mu, sigma)
    # every one of the 16 x 64 weights, not just their mean: p(x|z) p(z) / q(z|x) = p(x) for every z
    np.testing.assert_allclose(np.asarray(log_w), np.broadcast_to(log_px, (16, 64)), atol=2e-4)
    loss, _ = iwae_loss(model, jnp.asarray(x, jnp.float32), jax.random.key(1), 16)
    np.testing.assert_allclose(float(loss), -log_px.mean(), atol=2e-4)


@pytest.mark.slow
def test_iwae_bound_rises_toward_log_px_with_k_for_a_poor_encoder():
    rng = np.random.default_rng(1)
    w, mu, sigma = _ppca(rng, orthogonal=False)
    x = jnp.asarray(_draw(rng, w, mu, sigma, 2000), jnp.float32)
    model = build(linear_config(D, Z))
    a, b, log_std = optimal_encoder(w, mu, sigma)
    set_linear(model, w, mu, sigma, 0.7 * a, 0.7 * b, log_std + 0.5)  # a deliberately poor encoder
    log_px = exact_log_px(np.asarray(x, np.float64), w, mu, sigma).mean()
    bounds = {k: -float(iwae_loss(model, x, jax.random.key(k), k)[0]) for k in (1, 2, 8, 64, 512)}
    gaps = [log_px - bounds[k] for k in sorted(bounds)]
    assert gaps[0] > 1.0  # the poor encoder leaves a real gap
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False)), gaps  # rising with K
    assert -0.02 < gaps[-1] < 0.1 * gaps[0], gaps  # close to log p(x), and still below it (up to MC error)


# --- beta-TCVAE ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prior", ["normal", "vamp"])
def test_btcvae_with_unit_weights_is_the_elbo_with_a_one_sample_kl(prior):
    c = micro_config(arch="mlp", prior=prior, pseudo_inputs=3)
    model, x, key = build(c), _batch(c, 8), jax.random.key(5)
    t = btcvae_terms(model, x, key, dataset_size=100)
    nll, _, aux = negative_elbo_terms(model, x, key)
    q, z = aux["q"], aux["q"].sample(key)
    mc_kl = jnp.sum(q.log_prob(z), axis=-1) - model.prior.log_prob(z)
    np.testing.assert_array_equal(np.asarray(t["nll"]), np.asarray(nll))
    np.testing.assert_allclose(np.asarray(t["mi"] + t["tc"] + t["dimwise_kl"]), np.asarray(mc_kl),
                               rtol=1e-5, atol=2e-5)  # sample by sample
    loss, m = btcvae_loss(model, x, key, 100)
    np.testing.assert_allclose(float(loss), float(jnp.mean(nll + mc_kl)), rtol=1e-6)
    assert {"mi", "tc", "dimwise_kl"} <= set(m)
    loss_tc, _ = btcvae_loss(model, x, key, 100, tc_weight=5.0)  # the weights do weigh their terms
    np.testing.assert_allclose(float(loss_tc - loss), 4.0 * float(jnp.mean(t["tc"])), rtol=1e-3, atol=2e-3)


def test_aggregate_posterior_over_the_whole_dataset_is_the_exact_mixture():
    rng = np.random.default_rng(2)
    n, zd = 7, 3
    mean, log_std = rng.normal(size=(n, zd)), rng.normal(scale=0.3, size=(n, zd))
    z = mean + np.exp(log_std) * rng.normal(size=(n, zd))  # z_i ~ q(z|x_i)
    from jaxvae.distributions import DiagonalGaussian

    q = DiagonalGaussian(jnp.asarray(mean, jnp.float32), jnp.asarray(log_std, jnp.float32))
    log_qz, log_qz_dim = aggregate_log_density(jnp.asarray(z, jnp.float32), q, dataset_size=n)
    # exact, float64: q(z) = 1/N sum_n q(z|x_n), and each dim's marginal
    per = -0.5 * np.log(2 * np.pi) - log_std[None] - 0.5 * ((z[:, None] - mean[None]) / np.exp(log_std[None])) ** 2
    np.testing.assert_allclose(np.asarray(log_qz), logsumexp(per.sum(-1), axis=1) - np.log(n), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(log_qz_dim), logsumexp(per, axis=1) - np.log(n), rtol=1e-5)
    # a minibatch of a larger dataset: the own example weighs 1/N, each other (N-1)/(N(M-1))
    log_qz_big, _ = aggregate_log_density(jnp.asarray(z, jnp.float32), q, dataset_size=1000)
    w = np.full((n, n), np.log(999 / (1000 * (n - 1))))
    np.fill_diagonal(w, np.log(1 / 1000))
    np.testing.assert_allclose(np.asarray(log_qz_big), logsumexp(w + per.sum(-1), axis=1), rtol=1e-5)


def test_btcvae_needs_the_dataset_size():
    c = micro_config(arch="mlp", objective="btcvae")  # dataset_size 0: not resolved from any data
    with pytest.raises(ConfigError, match="dataset size"):
        objective_loss(c, build(c), _batch(c), jax.random.key(0))


def _error(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxvae: error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


class _Stream:
    """Training images without a length, as a streaming source would give."""

    def __init__(self, images):
        self.images = images

    def __getitem__(self, i):
        return self.images[i]


def test_btcvae_on_data_of_unknown_size_is_refused_before_writing(capsys, tmp_path, monkeypatch):
    real = data_lib.load_dataset

    def streaming(c):
        ds = real(c)
        return data_lib.Dataset(train=_Stream(ds.train), val=ds.val, source=ds.source)

    monkeypatch.setattr(data_lib, "load_dataset", streaming)
    out = tmp_path / "never"
    err = _error(capsys, ["train", *MICRO_FLAGS, "--objective", "btcvae", "--out", str(out)])
    assert "dataset size" in err and "--dataset-size" in err
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--objective", "iwae", "--iw-k", "0"], "iw_k must be a positive integer, got 0"),
    (["--objective", "vae"], "unknown objective 'vae'"),
    (["--objective", "btcvae", "--batch-size", "1"], "batch_size must be >= 2"),
    (["--binarize", "static"], "--binarize static is for a bernoulli likelihood, not gaussian"),
    (["--likelihood", "bernoulli", "--binarize", "half"], "unknown binarize 'half'"),
    (["--objective", "iwae", "--free-bits", "0.5"], "--free-bits goes with --objective elbo only"),
])
def test_bad_objective_flags(capsys, tmp_path, flags, message):
    out = tmp_path / "never"
    assert message in _error(capsys, ["train", *MICRO_FLAGS, *flags, "--out", str(out)])
    assert not out.exists()


# --- binarization -------------------------------------------------------------------------------------

def test_binarize_static_thresholds_and_dynamic_draws_bernoulli_of_the_intensity():
    x = jnp.asarray(np.linspace(-1, 1, 11, dtype=np.float32))  # intensities 0, 0.1, ..., 1
    np.testing.assert_array_equal(np.asarray(losses.binarize(x, "static", jax.random.key(0))),
                                  np.where(np.arange(11) > 5, 1.0, -1.0))
    big = jnp.broadcast_to(x, (20000, 11))
    draws = np.asarray(losses.binarize(big, "dynamic", jax.random.key(1)))
    assert set(np.unique(draws)) <= {-1.0, 1.0}
    np.testing.assert_allclose(((draws + 1) / 2).mean(axis=0), np.linspace(0, 1, 11), atol=0.015)
    again = np.asarray(losses.binarize(big, "dynamic", jax.random.key(1)))
    other = np.asarray(losses.binarize(big, "dynamic", jax.random.key(2)))
    assert np.array_equal(draws, again) and not np.array_equal(draws, other)


def test_dynamic_binarization_draws_afresh_each_training_step():
    c = micro_config(arch="mlp", likelihood="bernoulli", binarize="dynamic")
    graphdef, state = init_state(c)
    step = make_train_step(graphdef, c)
    x = _batch(c, 16)
    # the loss at the same parameters on the same images differs only through the binarization:
    # compare two steps' losses from one state (the state is donated, so copy it first)
    copy = jax.tree.map(jnp.copy, state)
    _, m0 = step(state, x)
    copy["step"] = copy["step"] + 1  # another step's key: another binarization (and posterior noise)
    _, m1 = step(copy, x)
    assert float(m0["reconstruction_loss"]) != float(m1["reconstruction_loss"])
    static = c.replace(binarize="static")
    graphdef, state = init_state(static)
    _, ms = make_train_step(graphdef, static)(state, x)
    # static: the loss equals that on pre-thresholded images with no binarization
    plain = c.replace(binarize="")
    graphdef, state = init_state(plain)
    _, mp = make_train_step(graphdef, plain)(state, jnp.where(x > 0, 1.0, -1.0))
    assert float(ms["loss"]) == float(mp["loss"])


def test_evaluate_binarizes_as_trained_and_says_how():
    c = micro_config(arch="mlp", likelihood="bernoulli", binarize="static")
    model = build(c)
    images = data_lib.make_shapes(6, c.image_size, seed=4)[0]
    images[:, :2] = 100  # gray pixels: not binary
    r = evaluate(model, images, 4, config=c, per_example=True)
    thresholded = np.where(images > 127, 255, 0).astype(np.uint8)
    ref = evaluate(model, thresholded, 4, config=c.replace(binarize=""), per_example=True)
    np.testing.assert_allclose(r["per_example"]["iwae"], ref["per_example"]["iwae"], rtol=1e-6)
    assert r["binarization"].startswith("static") and r["bits_per_dim_valid_bound"]
    cd = c.replace(binarize="dynamic")
    r1, r2 = (evaluate(model, images, 4, config=cd, per_example=True, seed=s) for s in (0, 0))
    r3 = evaluate(model, images, 4, config=cd, per_example=True, seed=1)
    assert r1["per_example"]["iwae"] == r2["per_example"]["iwae"] != r3["per_example"]["iwae"]
    assert r1["binarization"].startswith("dynamic: one fixed stochastic binarization")


def test_btcvae_takes_n_from_the_data_and_its_step_returns_its_terms():
    from jaxvae.train import resolve_dataset_size

    c = micro_config(arch="mlp", objective="btcvae", tc_weight=3.0)
    images = np.zeros((37, 16, 16, 3), np.uint8)
    resolved = resolve_dataset_size(c, data_lib.Dataset(train=images, val=images[:4], source="array"))
    assert resolved.dataset_size == 37
    assert resolve_dataset_size(c.replace(dataset_size=60000), None).dataset_size == 60000  # given: kept
    graphdef, state = init_state(resolved)
    _, m = make_train_step(graphdef, resolved)(state, _batch(c, 16))
    assert {"mi", "tc", "dimwise_kl"} <= set(m)  # logged to metrics.jsonl like every metric of the step
    assert np.isfinite([float(m[k]) for k in ("loss", "mi", "tc", "dimwise_kl")]).all()
