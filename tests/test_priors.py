"""The priors: the VampPrior against N(0, I) and against its own normalisation, and that every consumer
of log p(z) (loss, evaluate, sampling, traversals) asks the model's prior."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config
from test_objectives import MICRO_FLAGS, _error

from jaxvae import losses, pictures, sample
from jaxvae.config import Config
from jaxvae.evaluation import evaluate
from jaxvae.model import build
from jaxvae.priors import StandardNormal, VampPrior


def _vector_config(z: int, k: int, **changes) -> Config:
    return Config(arch="linear", data_dim=3, z_dim=z, prior="vamp", pseudo_inputs=k, posterior_scale="log_std",
                  decoder_scale_sharing="shared", beta=1.0, **changes)


def _zero_head(model):
    """Encoder outputs mean 0, raw scale 0 (sigma 1 under log_var and log_std) for every input."""
    model.encoder.head.kernel[...] = jnp.zeros_like(model.encoder.head.kernel[...])
    model.encoder.head.bias[...] = jnp.zeros_like(model.encoder.head.bias[...])


def test_model_owns_its_prior_and_normal_adds_no_parameters():
    c = micro_config(arch="mlp")
    normal, vamp = build(c), build(c.replace(prior="vamp", pseudo_inputs=7))
    assert isinstance(normal.prior, StandardNormal) and isinstance(vamp.prior, VampPrior)
    assert vamp.prior.encoder is vamp.encoder  # shared, not a copy: the prior follows the encoder
    from jaxvae.model import count_params

    # the pseudo-inputs are the only new parameters, and the normal model's are untouched by the option
    assert count_params(vamp) - count_params(normal) == 7 * 16 * 16 * 3
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), jax.tree.leaves(normal.encoder),
                        jax.tree.leaves(vamp.encoder))
    assert all(same)


def test_vamp_with_one_pseudo_input_whose_posterior_is_standard_normal_is_the_standard_normal():
    c = micro_config(arch="mlp", prior="vamp", pseudo_inputs=1)
    model = build(c)
    _zero_head(model)
    z = jax.random.normal(jax.random.key(0), (5, 7, c.z_dim)) * 2.0
    ref = StandardNormal(c.z_dim)
    np.testing.assert_allclose(np.asarray(model.prior.log_prob(z)), np.asarray(ref.log_prob(z)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(model.prior.marginal_log_prob(z)), np.asarray(ref.marginal_log_prob(z)),
                               rtol=1e-6)
    mean, std = model.prior.marginal_moments()
    np.testing.assert_allclose(np.asarray(mean), 0.0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(std), 1.0, rtol=1e-6)
    # its samples are N(0, T^2 I) draws too
    draws = np.asarray(model.prior.sample(jax.random.key(1), 20000, 0.5))
    np.testing.assert_allclose(draws.std(axis=0), 0.5, rtol=0.03)


@pytest.mark.parametrize("z_dim", [1, 2])
def test_vamp_log_prob_is_a_normalised_density(z_dim):
    c = _vector_config(z_dim, 4)
    model = build(c)
    rng = np.random.default_rng(0)
    model.prior.pseudo_inputs[...] = jnp.asarray(rng.normal(size=(4, 3)) * 2, jnp.float32)
    kernel = np.zeros((3, 2 * z_dim))  # means 0.5 W u (within a few units), sigma exp(-0.7) ~ 0.5
    kernel[:, :z_dim] = 0.5 * rng.normal(size=(3, z_dim))
    model.encoder.head.kernel[...] = jnp.asarray(kernel, jnp.float32)
    model.encoder.head.bias[...] = jnp.asarray(np.r_[np.zeros(z_dim), np.full(z_dim, -0.7)], jnp.float32)
    means = np.asarray(model.prior.mixture().components.mean)
    assert np.abs(means).max() < 4 and np.unique(means.round(3), axis=0).shape[0] == 4  # 4 distinct components
    grid = np.linspace(-8, 8, 801 if z_dim == 1 else 321)
    h = grid[1] - grid[0]
    if z_dim == 1:
        density = np.exp(np.asarray(model.prior.log_prob(jnp.asarray(grid[:, None], jnp.float32)), np.float64))
        assert abs(np.trapezoid(density, dx=h) - 1.0) < 1e-4
        return
    zz = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1)  # (G, G, 2)
    log_p = np.asarray(model.prior.log_prob(jnp.asarray(zz, jnp.float32)), np.float64)  # (G, G)
    assert abs(np.trapezoid(np.trapezoid(np.exp(log_p), dx=h, axis=1), dx=h) - 1.0) < 1e-4
    # each dim's marginal is the joint integrated over the other
    marginal = np.exp(np.asarray(model.prior.marginal_log_prob(jnp.asarray(zz[:, 0], jnp.float32)), np.float64))
    np.testing.assert_allclose(marginal[:, 0], np.trapezoid(np.exp(log_p), dx=h, axis=1), atol=1e-5)


def test_loss_takes_a_monte_carlo_kl_against_the_vamp_prior():
    c = micro_config(arch="mlp", prior="vamp", pseudo_inputs=3)
    model = build(c)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
    key = jax.random.key(2)
    _, kl, aux = losses.negative_elbo_terms(model, x, key)
    z = aux["q"].sample(key)
    np.testing.assert_allclose(np.asarray(kl), np.asarray(jnp.sum(aux["q"].log_prob(z), -1) - model.prior.log_prob(z)),
                               rtol=1e-6)


def test_evaluate_sampling_and_traversals_use_the_models_prior():
    c = micro_config(arch="mlp", prior="vamp", pseudo_inputs=1)
    vamp = build(c)
    _zero_head(vamp)  # the one component is N(0, I): the same prior as the normal model's
    normal = build(c.replace(prior="normal"))
    _zero_head(normal)
    images = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    rv = evaluate(vamp, images, 8, config=c, per_example=True)
    rn = evaluate(normal, images, 8, config=c.replace(prior="normal"), per_example=True)
    np.testing.assert_allclose(rv["per_example"]["iwae"], rn["per_example"]["iwae"], rtol=1e-5)
    # a prior that differs gives a different bound: evaluate does not assume N(0, I)
    vamp.prior.pseudo_inputs[...] = vamp.prior.pseudo_inputs[...] + 0.0  # unchanged inputs ...
    vamp.encoder.head.bias[...] = vamp.encoder.head.bias[...].at[0].set(3.0)  # ... but a shifted posterior
    moved = evaluate(vamp, images, 8, config=c, per_example=True)
    assert np.all(np.abs(np.array(moved["per_example"]["iwae"]) - rn["per_example"]["iwae"]) > 1e-3)
    # the Monte Carlo KL per dim against the prior's marginal, and the total in marginal_kl
    assert len(moved["kl_per_dim"]) == c.z_dim
    np.testing.assert_allclose(moved["marginal_kl"], moved["kl"]["mean"] - moved["mutual_information"], rtol=1e-6)
    # sampling draws the prior's latents: here every code's dim 0 sits near 3 (the shifted component)
    z = sample.prior_latents(vamp, 4000, jax.random.key(0))
    assert abs(z[:, 0].mean() - 3.0) < 0.1 and abs(z[:, 1].mean()) < 0.1
    # traversals sweep around the prior marginal's mean in its sigmas
    center, scale = pictures.prior_moments(vamp)
    np.testing.assert_allclose(center[0], 3.0, atol=1e-5)
    rows = pictures.traversal_latents(np.zeros(c.z_dim), [0], np.array([-1.0, 0.0, 1.0]), center, scale)
    np.testing.assert_allclose(rows[0, :, 0], [3.0 - scale[0], 3.0, 3.0 + scale[0]], rtol=1e-6)


def test_vamp_without_pseudo_inputs_is_refused(capsys, tmp_path):
    out = tmp_path / "never"
    err = _error(capsys, ["train", *MICRO_FLAGS, "--prior", "vamp", "--pseudo-inputs", "0", "--out", str(out)])
    assert "--prior vamp needs --pseudo-inputs >= 1, got 0" in err
    assert not out.exists()
    assert "unknown prior 'flow'" in _error(capsys, ["train", *MICRO_FLAGS, "--prior", "flow", "--out", str(out)])
    assert not out.exists()
