"""Samplers fitted after training (fit-sampler, --sampler gmm) and the checkpoint choice (--checkpoint)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import micro_config, untrained_run
from PIL import Image
from test_objectives import _error

import jaxvae
from jaxvae import cli, sample
from jaxvae import data as data_lib
from jaxvae import run as run_lib
from jaxvae.checkpoint import Checkpointer
from jaxvae.run import RunError
from jaxvae.samplers import GMMSampler, fit_gmm, load_sampler

TRUE_W = np.array([0.5, 0.3, 0.2])
TRUE_MEANS = np.array([[-4.0, 0.0], [3.0, 3.0], [2.0, -4.0]])
TRUE_COVS = np.array([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[0.3, -0.2], [-0.2, 0.6]]])


def _draw_mixture(rng, n):
    k = rng.choice(3, size=n, p=TRUE_W)
    chol = np.linalg.cholesky(TRUE_COVS)
    return TRUE_MEANS[k] + np.einsum("nij,nj->ni", chol[k], rng.normal(size=(n, 2)))


def test_gmm_recovers_a_known_mixture():
    rng = np.random.default_rng(0)
    fitted = fit_gmm(_draw_mixture(rng, 6000), 3, seed=0)
    order = [int(np.argmin(np.linalg.norm(fitted.means - m, axis=1))) for m in TRUE_MEANS]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(fitted.weights[order], TRUE_W, atol=0.02)
    np.testing.assert_allclose(fitted.means[order], TRUE_MEANS, atol=0.08)
    np.testing.assert_allclose(fitted.covariances[order], TRUE_COVS, atol=0.1)
    # its density is the mixture's (against scikit-learn's own), and its draws have the mixture's moments
    from sklearn.mixture import GaussianMixture

    probe = _draw_mixture(rng, 50)
    gm = GaussianMixture(3, covariance_type="full")
    gm.weights_, gm.means_, gm.covariances_ = fitted.weights, fitted.means, fitted.covariances
    gm.precisions_cholesky_ = np.linalg.cholesky(np.linalg.inv(fitted.covariances))
    np.testing.assert_allclose(fitted.log_prob(probe), gm.score_samples(probe), rtol=1e-8)
    truth = GMMSampler(TRUE_W, TRUE_MEANS, TRUE_COVS)
    draws = truth.sample(40000, seed=1)
    mean = TRUE_W @ TRUE_MEANS
    cov = sum(w * (c + np.outer(m - mean, m - mean)) for w, m, c in zip(TRUE_W, TRUE_MEANS, TRUE_COVS, strict=True))
    np.testing.assert_allclose(draws.mean(axis=0), mean, atol=0.05)
    np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.15)
    assert np.array_equal(truth.sample(5, seed=3), truth.sample(5, seed=3))
    round_trip = GMMSampler.from_json(fitted.to_json())
    np.testing.assert_array_equal(round_trip.log_prob(probe), fitted.log_prob(probe))


@pytest.fixture
def run_with_checkpoint(tmp_path):
    return untrained_run(tmp_path / "run", micro_config(arch="mlp"))


def test_fit_sampler_writes_gmm_json_and_sample_draws_from_it(run_with_checkpoint, tmp_path, capsys):
    run = run_with_checkpoint
    assert cli.main(["fit-sampler", str(run), "--kind", "gmm", "--components", "2", "--limit", "400"]) == 0
    assert "checkpoint 0" in capsys.readouterr().err
    fitted = load_sampler(run, "gmm")
    assert sorted(p.name for p in (run / "samplers").iterdir()) == ["gmm.json"]  # no temporary file left
    info = fitted.info
    assert info["train_examples"] == 400 and info["checkpoint_step"] == 0 and len(fitted.weights) == 2
    # the held-out figures are what they say: the mean log-density of the held-out posterior means
    vae = jaxvae.load(run)
    ds = data_lib.load_dataset(vae.config)
    held = sample.encode_mean(vae.model, data_lib.to_model_range(ds.val))
    np.testing.assert_allclose(info["heldout_loglik_sampler"], fitted.log_prob(held).mean(), rtol=1e-5)
    prior = np.mean(np.sum(-0.5 * np.log(2 * np.pi) - 0.5 * held.astype(np.float64) ** 2, axis=1))
    np.testing.assert_allclose(info["heldout_loglik_prior"], prior, rtol=1e-5)
    # sample --sampler gmm and the API decode the sampler's draws
    images = vae.sample(4, seed=2, sampler="gmm")
    np.testing.assert_allclose(images, sample.decode_mean(vae.model, fitted.sample(4, seed=2)), atol=1e-6)
    out = tmp_path / "gmm.png"
    assert cli.main(["sample", str(run), "--sampler", "gmm", "--n", "4", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 0
    from jaxvae.report import build_report

    page = build_report(run)  # prior and sampler samples side by side, with the held-out figures
    assert "Samples: prior and gmm sampler" in page and f"{fitted.heldout_loglik_sampler:.2f} nats" in page


def test_sampler_and_fit_sampler_refusals(run_with_checkpoint, tmp_path, capsys):
    run = run_with_checkpoint
    out = tmp_path / "never.png"
    err = _error(capsys, ["sample", str(run), "--sampler", "gmm", "--out", str(out)])
    assert "no gmm sampler" in err and "jaxvae fit-sampler" in err
    assert not out.exists()
    with pytest.raises(RunError, match="no gmm sampler"):
        jaxvae.load(run).sample(2, sampler="gmm")
    bare = run_lib.create(tmp_path / "bare", micro_config(arch="mlp"))  # a run with no checkpoint
    assert "no checkpoint" in _error(capsys, ["fit-sampler", str(bare), "--kind", "gmm"])
    assert not (bare / "samplers").exists()
    assert "unknown --kind 'vq'" in _error(capsys, ["fit-sampler", str(run), "--kind", "vq"])
    assert "--components must be positive" in _error(capsys, ["fit-sampler", str(run), "--components", "0"])
    assert not (run / "samplers").exists()


# --- which checkpoint ---------------------------------------------------------------------------------

@pytest.fixture
def run_with_three_checkpoints(tmp_path):
    """Checkpoints 10, 20, 30 with validation losses 5, 3, 4 and different parameters."""
    from jaxvae.step import init_state

    c = micro_config(arch="mlp")
    out = run_lib.create(tmp_path / "run", c)
    _, state = init_state(c)
    ckpt = Checkpointer(out)
    for step, val in ((10, 5.0), (20, 3.0), (30, 4.0)):
        import jax

        state = {**state, "params": jax.tree.map(lambda a, s=step: a + 0.01 * s, state["params"])}
        ckpt.save(step, state, {"epoch": 0, "pos": 0}, val)
        ckpt.wait()
    ckpt.close()
    return out


def test_load_picks_best_latest_or_a_step(run_with_three_checkpoints, capsys, tmp_path):
    run = run_with_three_checkpoints
    picks = {which: jaxvae.load(run, checkpoint=which) for which in ("best", "latest", 10, "20")}
    assert {w: v.checkpoint_step for w, v in picks.items()} == {"best": 20, "latest": 30, 10: 10, "20": 20}
    assert picks["best"].checkpoint_note == "best by validation loss"
    bias = lambda v: float(np.asarray(v.model.decoder.embed.bias[...]).ravel()[0])  # offset by the step
    assert bias(picks["latest"]) - bias(picks[10]) == pytest.approx(0.5)  # offsets 0.1 + 0.2 + 0.3 vs 0.1
    assert bias(picks["best"]) == bias(picks["20"])
    with pytest.raises(RunError, match="no checkpoint at step 12345"):
        jaxvae.load(run, checkpoint=12345)
    out = tmp_path / "s.png"
    assert cli.main(["sample", str(run), "--n", "2", "--out", str(out)]) == 0
    assert "jaxvae: checkpoint 20 (best by validation loss)" in capsys.readouterr().err
    for command in (["evaluate", str(run), "--limit", "2"], ["sample", str(run), "--out", str(tmp_path / "x.png")],
                    ["reconstruct", str(run), "--out", str(tmp_path / "x.png")],
                    ["interpolate", str(run), "--out", str(tmp_path / "x.png")],
                    ["traverse", str(run), "--out", str(tmp_path / "x.png")],
                    ["fit-sampler", str(run)]):
        err = _error(capsys, [*command, "--checkpoint", "12345"])
        assert "no checkpoint at step 12345" in err and "10, 20, 30" in err, command
    assert "--checkpoint must be best, latest or a step number" in _error(
        capsys, ["sample", str(run), "--checkpoint", "newest", "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists() and not (run / "samplers").exists()


def test_evaluate_reports_the_checkpoint_it_used(run_with_three_checkpoints, capsys, tmp_path):
    out = tmp_path / "e.json"
    assert cli.main(["evaluate", str(run_with_three_checkpoints), "--limit", "2", "--iw-samples", "2",
                     "--checkpoint", "latest", "--out", str(out)]) == 0
    result = run_lib.read_json(out)
    assert result["checkpoint_step"] == 30 and result["checkpoint"] == "30 (latest)"
    assert "checkpoint: 30 (latest)" in capsys.readouterr().out
