"""The loss and the step: -ELBO at beta 1, determinism under a seed, overfitting one batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config
from flax import nnx

from jaxvae import data as data_lib
from jaxvae.losses import negative_elbo_terms, vae_loss
from jaxvae.model import build
from jaxvae.step import init_state, make_train_step


def _batch(c, n=16, seed=0):
    images, _ = data_lib.make_shapes(n, c.image_size, seed=seed)
    return data_lib.to_model_range(images)


def test_loss_is_summed_nll_plus_beta_kl_averaged_over_the_batch():
    c = micro_config()
    model, x, key = build(c), jnp.asarray(_batch(c, 8)), jax.random.key(0)
    q = model.encode(x)
    z = q.sample(key)
    p = model.decode(z)
    s = np.asarray(p.std, np.float64)
    nll = np.sum(0.5 * np.log(2 * np.pi) + np.log(s) + (np.asarray(x) - np.asarray(p.mean)) ** 2 / (2 * s**2),
                 axis=(1, 2, 3))
    sq = np.asarray(q.std, np.float64)
    kl = np.sum(0.5 * (sq**2 + np.asarray(q.mean, np.float64) ** 2 - 1 - np.log(sq**2)), axis=1)
    for beta in (1.0, 100.0):
        loss, metrics = vae_loss(model, x, key, beta)
        np.testing.assert_allclose(float(loss), np.mean(nll + beta * kl), rtol=1e-5)
        np.testing.assert_allclose(float(metrics["kl_loss"]), np.mean(kl), rtol=1e-5)  # unweighted
        np.testing.assert_allclose(float(metrics["reconstruction_loss"]), np.mean(nll), rtol=1e-5)
    n2, k2, _ = negative_elbo_terms(model, x, key)
    assert n2.shape == k2.shape == (8,)


def _run_steps(c, batches):
    graphdef, state = init_state(c)
    step = make_train_step(graphdef, c)
    history = []
    for x in batches:
        state, m = step(state, jnp.asarray(x))
        history.append(float(m["loss"]))
    return state, history


@pytest.mark.slow
def test_same_seed_same_run_other_seed_other_run():
    c = micro_config()
    batches = [_batch(c, 16, seed=i) for i in range(3)]
    s1, h1 = _run_steps(c, batches)
    s2, h2 = _run_steps(c, batches)
    _, h3 = _run_steps(c.replace(seed=1), batches)
    assert h1 == h2
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), s1["params"], s2["params"]))
    # another seed: another initialisation, so every step's loss differs, not just one bit of one
    assert all(abs(a - b) > 1e-4 * abs(a) for a, b in zip(h1, h3, strict=True)), (h1, h3)


def test_overfits_one_small_batch():
    c = micro_config(lr=3e-3)
    x = _batch(c, 8)
    _, history = _run_steps(c, [x] * 150)
    first, last = np.mean(history[:5]), np.mean(history[-5:])
    assert last < first - 0.5 * abs(first), (first, last)


@pytest.mark.slow
def test_step_noise_depends_on_the_step_count():
    """fold_in(key, step): two consecutive steps on the same batch draw different noise."""
    c = micro_config(lr=1e-12)
    x = _batch(c, 16)
    _, history = _run_steps(c, [x, x])
    # lr 1e-12 leaves the parameters as they were: each step's loss is the initial model's at its own key
    graphdef, state = init_state(c)
    model, key = nnx.merge(graphdef, state["params"]), jax.random.key(c.seed + 1)
    want = [float(vae_loss(model, jnp.asarray(x), jax.random.fold_in(key, t), c.beta)[0]) for t in (0, 1)]
    assert history == pytest.approx(want, rel=1e-5)
    assert abs(want[0] - want[1]) > 1e-3 * abs(want[0])


@pytest.mark.slow
def test_gradient_reaches_every_parameter():
    c = micro_config()
    graphdef, params = nnx.split(build(c))
    x = jnp.asarray(_batch(c, 4))
    grads = jax.grad(lambda p: vae_loss(nnx.merge(graphdef, p), x, jax.random.key(0), 1.0)[0])(params)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and all(n > 0 for n in norms)
