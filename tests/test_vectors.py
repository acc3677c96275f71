"""Vector data: (N, D) arrays from .npy or .csv, standardization, batches, and the config's data_dim;
a vector run trained, resumed and loaded."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae
from jaxvae import parallel
from jaxvae.config import Config, ConfigError
from jaxvae.data import Dataset, load_dataset, to_model_range
from jaxvae.data.vectors import VectorBatches, is_vector_source, load_vectors, read_vectors, resolve_config
from jaxvae.train import train


def write_csv(path, values, header="a,b,c"):
    path.write_text(header + "\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in values) + "\n")
    return str(path)


@pytest.fixture
def values():
    return np.random.default_rng(0).normal(loc=[1.0, -2.0, 5.0], scale=[0.5, 2.0, 3.0], size=(200, 3))


def test_npy_and_csv_read_the_same_vectors(tmp_path, values):
    np.save(tmp_path / "x.npy", values.astype(np.float32))
    csv = write_csv(tmp_path / "x.csv", values)
    from_npy, _ = read_vectors(str(tmp_path / "x.npy"))
    from_csv, columns = read_vectors(csv)
    assert columns == ("a", "b", "c")
    np.testing.assert_allclose(from_npy, from_csv, atol=1e-5)
    assert is_vector_source(csv) and is_vector_source(str(tmp_path / "x.npy"))


def test_images_and_other_sources_are_not_vectors(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((4, 8, 8, 3), np.uint8))
    assert not is_vector_source(str(tmp_path / "img.npy"))
    assert not is_vector_source("shapes")
    assert not is_vector_source(str(tmp_path / "missing.npy"))


@pytest.mark.parametrize("content, message", [
    ("1,2,3\n4,5,6\n", "header"),
    ("a,b,c\n1,2\n3,4\n", "header names 3 columns"),
    ("a,b\n1,x\n2,3\n", "x"),
    ("a,b\n1,2\n", "at least 2 rows"),
    ("a,b\n1,2\n3,nan\n", "row 1 holds a NaN"),
    ("", "empty"),
])
def test_bad_csv_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_vectors(str(path))


def test_bad_npy_is_one_clear_error(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((4, 3, 2), np.float32))
    with pytest.raises(ConfigError, match="2-D"):
        read_vectors(str(tmp_path / "cube.npy"))
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ConfigError, match="numeric"):
        read_vectors(str(tmp_path / "text.npy"))


def test_resolve_config_records_d_and_refuses_mismatches(tmp_path, values):
    csv = write_csv(tmp_path / "x.csv", values)
    c = resolve_config(Config(data=csv, arch="mlp"))
    assert c.data_dim == 3 and c.data_shape == (3,)
    with pytest.raises(ConfigError, match="arch mlp or --arch linear"):
        resolve_config(Config(data=csv))  # the transformer needs images
    with pytest.raises(ConfigError, match="data_dim 5"):
        resolve_config(Config(data=csv, arch="mlp", data_dim=5))
    with pytest.raises(ConfigError, match="--standardize is for vector data"):
        resolve_config(Config(standardize=True))


def test_standardize_uses_the_training_split(tmp_path, values):
    csv = write_csv(tmp_path / "x.csv", values)
    c = resolve_config(Config(data=csv, arch="linear", standardize=True, val_fraction=0.1))
    ds = load_vectors(c)
    assert ds.kind == "vectors" and ds.train.dtype == np.float32
    assert ds.train.shape == (180, 3) and ds.val.shape == (20, 3)
    np.testing.assert_allclose(ds.train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.train.std(axis=0), 1.0, atol=1e-5)
    # The held-out rows get the training statistics, not their own.
    raw_train = (ds.train * ds.std + ds.mean)
    np.testing.assert_allclose(ds.transform(raw_train), ds.train, atol=1e-5)
    same = load_dataset(c)  # the hook in data.load_dataset gives the same split
    np.testing.assert_array_equal(same.val, ds.val)
    plain = load_vectors(c.replace(standardize=False))
    np.testing.assert_allclose(plain.train, raw_train, atol=1e-4)


def test_vector_batches_cover_every_row_and_resume_exactly():
    rows = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    it = VectorBatches(rows, 6, seed=3)
    epoch = np.concatenate([next(it) for _ in range(3)])  # 18 of 20 rows, none twice
    assert len(np.unique(epoch[:, 0])) == 18
    state = it.get_state()
    ahead = [next(it) for _ in range(4)]
    again = VectorBatches(rows, 6, seed=3)
    again.set_state(state)
    for a, b in zip(ahead, [next(again) for _ in range(4)], strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="larger than the dataset"):
        VectorBatches(rows, 64, seed=0)
    with pytest.raises(ConfigError, match="flip"):
        VectorBatches(rows, 4, seed=0, flip=True)


def test_the_dataset_knows_images_from_vectors_and_makes_model_input(tmp_path, values):
    vectors = load_dataset(Config(data=write_csv(tmp_path / "x.csv", values), arch="mlp"))  # D resolved here
    assert isinstance(vectors, Dataset) and vectors.kind == "vectors"
    np.testing.assert_array_equal(vectors.model_input(vectors.val[:3]), vectors.val[:3])  # (3, 3) as they are
    images = Dataset(train=np.zeros((4, 2, 2, 1), np.uint8), val=np.full((2, 2, 2, 1), 255, np.uint8), source="a")
    assert images.kind == "images"
    np.testing.assert_array_equal(images.model_input(images.val), to_model_range(images.val))  # (2, 2, 2, 1) [-1, 1]


def test_vector_batches_on_the_mesh_are_the_host_batches_sharded(tmp_path, values):
    ds = load_dataset(resolve_config(Config(data=write_csv(tmp_path / "x.csv", values), arch="linear")))
    mesh = parallel.data_mesh()
    host, ours = VectorBatches(ds.train, 16, seed=2), ds.batches(16, 2, False, mesh)
    for _ in range(14):  # 190 training rows: 11 batches an epoch, so this crosses into epoch 1
        batch = next(ours)
        assert isinstance(batch, jax.Array) and batch.sharding == parallel.batch_sharding(mesh)
        np.testing.assert_array_equal(np.asarray(batch), next(host))  # (16, 3), bit for bit
    state, ahead = ours.get_state(), [np.asarray(next(ours)) for _ in range(3)]
    again = ds.batches(16, 2, False, mesh)
    again.set_state(state)
    for a in ahead:
        np.testing.assert_array_equal(np.asarray(next(again)), a)
    with pytest.raises(ConfigError, match="flip"):
        ds.batches(16, 2, True, mesh)


# A linear-Gaussian VAE on standardized 3-D vectors: 61 training rows, 7 batches of 8 an epoch.
LINEAR = dict(arch="linear", z_dim=2, decoder_scale_sharing="shared", standardize=True, beta=1.0, lr=1e-2,
              batch_size=8, steps=12, log_every=1, eval_every=6, ckpt_every=4, keep=2)


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vectors")
    rows = np.random.default_rng(0).normal(loc=[1.0, -2.0, 5.0], scale=[0.5, 2.0, 3.0], size=(64, 3))
    c = Config(data=write_csv(folder / "x.csv", rows), **LINEAR)
    train(c, folder / "run", quiet=True)
    return c, folder / "run"


def _digests(run, step: int) -> dict:
    return json.loads((run / "checkpoints" / str(step) / "integrity" / "metadata").read_text())


def test_a_vector_run_extended_mid_epoch_is_bitwise_equal(vector_run, tmp_path):
    c, reference = vector_run
    run = tmp_path / "run"
    train(c.replace(steps=5), run, quiet=True)  # stops in the middle of the first epoch
    summary = train(c, run, quiet=True, resume=True)  # --steps raised to 12
    assert summary["resumed_from_step"] == 5
    assert _digests(run, 12) == _digests(reference, 12)


def test_load_of_a_vector_run_encodes_and_reconstructs_in_closed_form(vector_run):
    c, run = vector_run
    vae = jaxvae.load(run)
    x = vae.held_out()  # (3, 3): the held-out rows, standardized with the training split's statistics
    ds = load_dataset(vae.config)
    np.testing.assert_array_equal(x, ds.val)
    np.testing.assert_allclose(ds.transform(ds.val * ds.std + ds.mean), x, atol=1e-5)
    # The linear model in float64: posterior mean A x + b, decoder mean W z + mu.
    head = np.asarray(vae.model.encoder.head.kernel[...], np.float64)  # (D, 2Z): [mean | raw scale]
    bias = np.asarray(vae.model.encoder.head.bias[...], np.float64)  # (2Z,)
    w = np.asarray(vae.model.decoder.embed.kernel[...], np.float64)  # (Z, D)
    mu = np.asarray(vae.model.decoder.embed.bias[...], np.float64)  # (D,)
    z = x @ head[:, :2] + bias[:2]  # (3, Z)
    q = vae.encode(x)
    assert q.mean.shape == (3, 2) and q.log_std.shape == (3, 2)
    np.testing.assert_allclose(q.mean, z, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(q.mean, np.asarray(vae.model.encode(jnp.asarray(x)).mean))
    np.testing.assert_allclose(vae.reconstruct(x), z @ w + mu, rtol=1e-5, atol=1e-5)  # (3, D)
    np.testing.assert_allclose(vae.encode(x[0]).mean, z[:1], rtol=1e-5, atol=1e-5)  # one (D,) vector
    path = vae.interpolate(x[0], x[1], steps=3, method="lerp")  # (3, D): the line between the two
    np.testing.assert_allclose(path, (np.linspace(0, 1, 3)[:, None] * (z[1] - z[0]) + z[0]) @ w + mu,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"vectors of shape \(B, 3\)"):
        vae.encode(np.zeros((1, 16, 16, 3), np.float32))
    with pytest.raises(ConfigError, match="for images"):
        vae.reconstruct(x, data_range="01")
