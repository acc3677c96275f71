"""The grain batch pipeline (order, flips, exact resume), the split, and load_dataset end to end."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxvae.config import Config, ConfigError
from jaxvae.data import BatchIterator, Rows, load_dataset, split, to_model_range, to_uint8

W = 6  # image width in the id-coded images below


def id_images(n):
    """(n, 4, W, 1) uint8: image i has i in column 0 and 250 elsewhere, so both its id and whether it
    was mirrored (the id moves to column W-1) can be read back from a batch."""
    images = np.full((n, 4, W, 1), 250, np.uint8)
    images[:, :, 0, 0] = np.arange(n)[:, None]
    return images


def read_ids(batch):
    """(B, 4, W, 1) float batch -> (ids (B,), mirrored (B,) bool)."""
    pixels = to_uint8(batch)
    mirrored = pixels[:, 0, 0, 0] == 250
    ids = np.where(mirrored, pixels[:, 0, W - 1, 0], pixels[:, 0, 0, 0])
    return ids.astype(int), mirrored


def take(iterator, k):
    return [next(iterator) for _ in range(k)]


def test_batches_are_exact_model_range_images():
    images = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    batch = next(BatchIterator(images, 8, seed=0))
    assert batch.shape == (8, 4, 4, 3) and batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    matches = [int(np.flatnonzero((to_model_range(images) == row).all(axis=(1, 2, 3)))[0]) for row in batch]
    np.testing.assert_array_equal(batch, to_model_range(images[matches]))


def test_order_is_fixed_by_the_seed_and_every_epoch_sees_every_image_once():
    images = id_images(12)
    ids = lambda seed: np.concatenate([read_ids(b)[0] for b in take(BatchIterator(images, 4, seed), 12)])
    a, b, c = ids(0), ids(0), ids(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    epochs = a.reshape(4, 12)  # 3 batches of 4 per epoch
    for epoch in epochs:
        assert sorted(epoch) == list(range(12))
    assert len({tuple(e) for e in epochs}) == 4  # reshuffled every epoch


def test_epochs_are_joined_without_dropping_images():
    ids = np.concatenate([read_ids(b)[0] for b in take(BatchIterator(id_images(10), 4, 0), 5)])
    np.testing.assert_array_equal(np.bincount(ids), np.full(10, 2))  # 20 = 2 epochs, batch 3 straddles


def test_flips_only_when_asked_and_deterministic():
    images = id_images(32)
    plain = np.concatenate([read_ids(b)[1] for b in take(BatchIterator(images, 8, 3, flip=False), 8)])
    assert not plain.any()
    flipped = [read_ids(b) for b in take(BatchIterator(images, 8, 3, flip=True), 8)]
    mirrored = np.concatenate([m for _, m in flipped])
    assert 0.3 < mirrored.mean() < 0.7  # about half of 64
    again = [read_ids(b) for b in take(BatchIterator(images, 8, 3, flip=True), 8)]
    for (ids1, m1), (ids2, m2) in zip(flipped, again, strict=True):
        np.testing.assert_array_equal(ids1, ids2)
        np.testing.assert_array_equal(m1, m2)


def test_flipped_image_is_the_exact_mirror():
    images = np.random.default_rng(1).integers(0, 256, (16, 4, 4, 3), dtype=np.uint8)
    for batch in take(BatchIterator(images, 16, 0, flip=True), 2):
        for row in to_uint8(batch):
            same = (images == row).all(axis=(1, 2, 3)).any()
            mirror = (images[:, :, ::-1] == row).all(axis=(1, 2, 3)).any()
            assert same or mirror


@pytest.mark.parametrize("consumed", [1, 3, 7])  # 7 batches of 4 cross the 10-image epoch edge
def test_get_state_set_state_resumes_the_exact_batches(consumed):
    images = id_images(10)
    run = BatchIterator(images, 4, seed=5, flip=True)
    take(run, consumed)
    state = json.loads(json.dumps(run.get_state()))  # what a checkpoint stores
    expected = take(run, 6)
    resumed = BatchIterator(images, 4, seed=5, flip=True)
    resumed.set_state(state)
    for a, b in zip(expected, take(resumed, 6), strict=True):
        np.testing.assert_array_equal(a, b)
    run.close()
    resumed.close()


def test_set_state_refuses_a_state_from_other_data():
    state = BatchIterator(id_images(10), 4, seed=0).get_state()
    with pytest.raises(ConfigError, match=r"cannot resume the data order: .*'images': 10.*'images': 12"):
        BatchIterator(id_images(12), 4, seed=0).set_state(state)
    with pytest.raises(ConfigError, match="batch_size 8 is larger than the dataset"):
        BatchIterator(id_images(5), 8, seed=0)


def test_split_is_deterministic_disjoint_and_keeps_memmaps_on_disk(tmp_path):
    images = id_images(40)
    train, val = split(images, 0.1)
    assert (len(train), len(val)) == (36, 4)
    train2, val2 = split(images, 0.1)
    np.testing.assert_array_equal(val, val2)
    ids = lambda a: set(np.asarray(a)[:, 0, 0, 0].tolist())
    assert ids(train) | ids(val) == set(range(40)) and not ids(train) & ids(val)
    np.save(tmp_path / "x.npy", images)
    mm_train, mm_val = split(np.load(tmp_path / "x.npy", mmap_mode="r"), 0.1)
    assert isinstance(mm_train, Rows) and mm_train.shape == (36, 4, W, 1) and len(mm_val) == 4
    np.testing.assert_array_equal(np.asarray(mm_val), val)
    np.testing.assert_array_equal(mm_train[3], train[3])
    np.testing.assert_array_equal(mm_train[[5, 2]], train[[5, 2]])
    np.testing.assert_array_equal(mm_train[:4], train[:4])
    with pytest.raises(ConfigError, match="leaves no training images"):
        split(images[:1], 0.5)


def test_load_dataset_on_a_folder_of_jpegs(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "faces").mkdir()
    for i in range(40):
        pixels = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "faces" / f"{i}.jpg")
    c = Config(data=str(tmp_path / "faces"), image_size=16, patch_size=4, val_fraction=0.1,
               cache_dir=str(tmp_path / "cache"), flip=True)
    ds = load_dataset(c)
    assert ds.train.shape == (36, 16, 16, 3) and ds.val.shape == (4, 16, 16, 3)
    assert ds.train.dtype == np.uint8
    batch = next(BatchIterator(ds.train, 8, c.seed, flip=c.flip))
    assert batch.shape == (8, 16, 16, 3) and -1.0 <= batch.min() < batch.max() <= 1.0
    np.save(tmp_path / "val.npy", np.zeros((3, 16, 16, 3), np.uint8))
    explicit = load_dataset(c.replace(val_data=str(tmp_path / "val.npy")))
    assert len(explicit.train) == 40 and explicit.val.shape == (3, 16, 16, 3)
