"""Latent statistics (jaxvae.latents), traversals (jaxvae.pictures) and `jaxvae traverse`, untrained."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import untrained_run
from flax import nnx
from PIL import Image

from jaxvae import cli, latents, pictures, sample
from jaxvae import data as data_lib
from jaxvae.config import Config
from jaxvae.losses import negative_elbo_terms
from jaxvae.model import build

TINY = Config(image_size=8, patch_size=4, hidden=32, depth=1, heads=2, mlp_ratio=2, z_dim=5,
              batch_size=8, steps=2, log_every=1, eval_every=2, ckpt_every=2)


@pytest.fixture(scope="module")
def model():
    return build(TINY)


@pytest.fixture(scope="module")
def images():
    return data_lib.to_model_range(data_lib.load_dataset(TINY).val[:37])


def test_kl_per_dim_matches_the_closed_form_in_float64():
    rng = np.random.default_rng(0)
    mean, log_std = rng.normal(size=(50, 4)), rng.normal(scale=0.5, size=(50, 4))
    sigma = np.exp(log_std)
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2)/2 - 1/2, averaged over the 50 images
    expected = np.mean(-np.log(sigma) + (sigma**2 + mean**2) / 2 - 0.5, axis=0)
    with jax.enable_x64(True):  # DiagonalGaussian's formula itself, in float64
        np.testing.assert_allclose(latents.kl_per_dim(mean, log_std), expected, rtol=1e-12)
        # a posterior equal to the prior carries no information
        np.testing.assert_allclose(latents.kl_per_dim(np.zeros((3, 2)), np.zeros((3, 2))), 0.0, atol=0)
    np.testing.assert_allclose(latents.kl_per_dim(mean, log_std), expected, rtol=1e-5)  # float32, as used
    np.testing.assert_allclose(latents.posterior_mean_variance(mean), mean.var(axis=0), rtol=1e-12)


def test_kl_per_dim_sums_to_the_kl_the_loss_logs(model, images):
    mean, log_std = latents.posterior(model, images)
    assert mean.shape == log_std.shape == (len(images), TINY.z_dim)
    kl = nnx.jit(lambda m, x, k: negative_elbo_terms(m, x, k)[1])(model, images, jax.random.key(0))  # (B,)
    np.testing.assert_allclose(latents.kl_per_dim(mean, log_std).sum(), float(np.mean(kl)), rtol=1e-4)


def test_padded_batches_give_what_unpadded_calls_give(model, images):
    """Inference zero-pads to power-of-two batches; the padding must not leak into results."""
    mean, _ = latents.posterior(model, images)  # 37 images: one padded batch of 64
    exact = nnx.jit(lambda m, x: m.encode(x).mean)(model, jnp.asarray(images))  # one call, 37 rows
    np.testing.assert_allclose(mean, exact, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sample.encode_mean(model, images), exact, rtol=1e-5, atol=1e-6)
    z = mean[:7].astype(np.float32)
    exact = nnx.jit(lambda m, z: m.decode(z).mean)(model, jnp.asarray(z))
    np.testing.assert_allclose(sample.decode_mean(model, z), exact, rtol=1e-5, atol=1e-6)


def test_most_active_orders_by_kl_and_breaks_ties_by_index():
    kl = np.array([0.1, 3.0, 0.0, 3.0, 2.0])
    assert latents.most_active(kl, 3).tolist() == [1, 3, 4]
    assert latents.most_active(kl, 10).tolist() == [1, 3, 4, 0, 2]


def test_traversal_latents_change_one_coordinate_per_row():
    z0 = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    values = np.array([-3.0, 0.0, 3.0])
    z = pictures.traversal_latents(z0, [2, 0], values)
    assert z.shape == (2, 3, 4)
    expected = np.tile(z0, (2, 3, 1))
    expected[0, :, 2] = values
    expected[1, :, 0] = values
    np.testing.assert_array_equal(z, expected)


def test_traverse_decodes_the_swept_posterior_mean(model, images):
    dims = [3, 1]
    wanted = pictures.Wanted(dims=tuple(dims), traversal_steps=5, span=2.0, image=4)
    out = pictures.pictures(model, images, None, wanted)
    grid, values = out["traversals"], out["traversal_values"]
    assert grid.shape == (2, 5, 8, 8, 3)
    np.testing.assert_allclose(values, [-2, -1, 0, 1, 2])
    assert out["traversal_dims"].tolist() == dims
    z0 = latents.posterior(model, images[4:5])[0][0]
    for row, d in enumerate(dims):
        z = np.tile(z0, (5, 1))
        z[:, d] = values
        np.testing.assert_allclose(grid[row], sample.decode_mean(model, z), rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="out of range"):
        pictures.check_dims([0, 5], TINY.z_dim)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run whose only checkpoint is the initial state: enough for every command that loads a run."""
    return untrained_run(tmp_path_factory.mktemp("traverse") / "run", TINY)


def test_traverse_command_writes_a_png(run_dir, tmp_path):
    out = tmp_path / "pics" / "t.png"
    assert cli.main(["traverse", str(run_dir), "--dims", "4", "0", "--steps", "5", "--out", str(out)]) == 0
    with Image.open(out) as im:
        im.load()
        assert im.width > 200 and im.height > 100
    default = tmp_path / "default.png"  # no --dims: the --top most active
    assert cli.main(["traverse", str(run_dir), "--top", "1", "--steps", "3", "--out", str(default)]) == 0
    with Image.open(default) as small, Image.open(out) as big:
        assert small.height < big.height  # 1 row against 2


@pytest.mark.parametrize("argv, message", [
    (["--dims", "7"], "out of range"),
    (["--dims", "1", "1"], "repeats"),
    (["--image", "100000"], "--image"),
    (["--steps", "0"], "--steps must be positive"),
])
def test_traverse_bad_input_is_one_line(run_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "t.png"
    assert cli.main(["traverse", str(run_dir), *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxvae: error:") and message in err[0]
    assert not out.exists()


def test_traverse_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["traverse", str(tmp_path), "--out", str(tmp_path / "t.png")]) == 2
    assert "is not a jaxvae run" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
