"""Vector data: (N, D) arrays from .npy or .csv, standardization, batches, and the config's data_dim."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvae.config import Config, ConfigError
from jaxvae.data import load_dataset
from jaxvae.data.vectors import VectorBatches, is_vector_source, load_vectors, read_vectors, resolve_config


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
