"""jaxvae.pictures: the one function that draws a run's pictures, checked against the primitives of
sample.py and latents.py, on an untrained tiny model."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxvae import data as data_lib
from jaxvae import latents, pictures, report, sample
from jaxvae.config import Config
from jaxvae.model import build

TINY = Config(image_size=8, patch_size=4, hidden=32, depth=1, heads=2, mlp_ratio=2, z_dim=5,
              batch_size=8, steps=2, log_every=1, eval_every=2, ckpt_every=2)
ATOL = 2e-5  # one batched decode against another: float32 rounding only


@pytest.fixture(scope="module")
def model():
    return build(TINY)


@pytest.fixture(scope="module")
def val():
    """37 held-out images, uint8 as the data set stores them."""
    return np.asarray(data_lib.load_dataset(TINY).val[:37])


def test_run_pictures_are_the_primitives_of_sample(model, val):
    key = pictures.run_key(TINY)
    out = pictures.pictures(model, val, key, pictures.RUN)
    x = data_lib.to_model_range(val)
    np.testing.assert_array_equal(out["originals"], x[:10])
    np.testing.assert_allclose(out["reconstructions"], sample.reconstruct(model, x[:10]), atol=ATOL)
    assert out["reconstruction_mse"] == pytest.approx(sample.pixel_mse(x[:10], out["reconstructions"]), rel=1e-12)
    # the draws `jaxvae sample RUN --n 20 --seed SEED` (and vae.sample(20, seed=SEED)) decode
    assert out["samples"].shape == (1, 20, 8, 8, 3)
    np.testing.assert_allclose(out["samples"][0], sample.sample_prior(model, 20, jax.random.key(TINY.seed)), atol=ATOL)
    np.testing.assert_array_equal(out["pixel"][0], x[0])
    np.testing.assert_array_equal(out["pixel"][-1], x[1])
    np.testing.assert_allclose(out["slerp"], sample.interpolate(model, x[0], x[1], 10, "slerp"), atol=ATOL)
    assert set(out) == {"originals", "reconstructions", "reconstruction_mse", "samples", "pixel", "slerp"}


def test_uint8_and_model_range_inputs_draw_the_same(model, val):
    wanted = pictures.Wanted(reconstructions=3, interpolations=("lerp",), pair=(5, 2), steps=4)
    a = pictures.pictures(model, val, None, wanted)
    b = pictures.pictures(model, data_lib.to_model_range(val), None, wanted)
    for name in ("originals", "reconstructions", "lerp"):
        np.testing.assert_array_equal(a[name], b[name])
    x = data_lib.to_model_range(val)
    np.testing.assert_allclose(a["lerp"], sample.interpolate(model, x[5], x[2], 4, "lerp"), atol=ATOL)


def test_temperatures_scale_one_draw(model):
    """N(0, I): the sample at temperature T decodes T times the draw at T = 1."""
    key = jax.random.key(7)
    out = pictures.pictures(model, None, key, pictures.Wanted(samples=6, temperatures=(0.5, 1.0)))
    assert out["samples"].shape == (2, 6, 8, 8, 3)
    z = sample.prior_latents(model, 6, key)
    np.testing.assert_allclose(out["samples"][0], sample.decode_mean(model, 0.5 * z), atol=ATOL)
    np.testing.assert_allclose(out["samples"][1], sample.decode_mean(model, z), atol=ATOL)


def test_traversals_sweep_the_most_active_dims_of_the_held_out_statistics(model, val, monkeypatch):
    """Statistics over the first latents.HELD_OUT images (8 here), the sweep around image 30, which
    lies beyond them: only the rows the pictures use are encoded."""
    monkeypatch.setattr(latents, "HELD_OUT", 8)
    wanted = pictures.Wanted(traversals=2, traversal_steps=3, span=1.5, image=30)
    out = pictures.pictures(model, val, None, wanted)
    x = data_lib.to_model_range(val)
    mean, log_std = latents.posterior(model, x[:8])
    np.testing.assert_allclose(out["kl_per_dim"], latents.kl_per_dim(mean, log_std), rtol=1e-5)
    np.testing.assert_allclose(out["mean_variance"], latents.posterior_mean_variance(mean), rtol=1e-4, atol=1e-9)
    dims = latents.most_active(out["kl_per_dim"], 2)
    assert out["traversal_dims"].tolist() == dims.tolist()
    np.testing.assert_allclose(out["traversal_values"], [-1.5, 0.0, 1.5])
    z0 = latents.posterior(model, x[30:31])[0][0]
    for row, d in enumerate(dims):
        z = np.tile(z0, (3, 1)).astype(np.float32)
        z[:, d] = [-1.5, 0.0, 1.5]
        np.testing.assert_allclose(out["traversals"][row], sample.decode_mean(model, z), atol=ATOL)


def test_the_report_draws_the_runs_samples():
    """The report shows the first PER_ROW of the same draws as samples.png, at each temperature."""
    wanted = report._wanted(TINY, 37)
    assert wanted.samples == pictures.RUN.samples and 1.0 in wanted.temperatures
    assert wanted.reconstructions == report.PER_ROW <= pictures.RUN.samples
    assert report._wanted(TINY, 1).interpolations == () and report._wanted(TINY, 0).reconstructions == 0
