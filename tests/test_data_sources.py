"""Array sources (.npy, .npz, MNIST idx, CIFAR-10 binary), written by the tests to each format's spec."""

import dataclasses
import gzip
import struct

import numpy as np
import pytest

from jaxvae.cli.data import PrepareArgs, ShowDataArgs
from jaxvae.config import MAX_IMAGE_PIXELS, Config, ConfigError
from jaxvae.data import DataOptions, load_images
from jaxvae.data.images import ImageSettings
from jaxvae.data.sources import conform, parse_source, to_gray


def write_idx3(path, images, magic=0x00000803, gz=False):
    """The idx format: magic (0, 0, type 0x08 ubyte, ndim 3), three big-endian uint32 sizes, pixels."""
    data = struct.pack(">4I", magic, *images.shape) + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def write_cifar(path, images, labels):
    """CIFAR-10 binary: per record 1 label byte, then 1024 R, 1024 G, 1024 B bytes (row-major)."""
    chw = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # (N, 3072)
    path.write_bytes(np.concatenate([labels[:, None].astype(np.uint8), chw], axis=1).tobytes())


def opts(size, channels=3, **kw):
    return DataOptions(image_size=size, channels=channels, **kw)


# --- .npy / .npz ----------------------------------------------------------------------------------

def test_npy_uint8_that_fits_is_memory_mapped_as_is(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    out = load_images(str(tmp_path / "x.npy"), opts(16))
    assert isinstance(out, np.memmap)
    np.testing.assert_array_equal(out, images)


def test_npy_nhw_grayscale_becomes_rgb(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "g.npy", images)
    out = load_images(str(tmp_path / "g.npy"), opts(8))
    assert out.shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(out, np.repeat(images[..., None], 3, axis=-1))
    np.testing.assert_array_equal(load_images(str(tmp_path / "g.npy"), opts(8, 1))[..., 0], images)


@pytest.mark.parametrize("data_range, values, expected", [
    ("01", [0.0, 0.5, 1.0, 0.2], [0, 128, 255, 51]),
    ("pm1", [-1.0, 0.0, 1.0, -0.6], [0, 128, 255, 51]),
])
def test_float_arrays_are_mapped_by_their_declared_range(tmp_path, data_range, values, expected):
    images = np.broadcast_to(np.array(values, np.float32)[:, None, None, None], (4, 4, 4, 3))
    np.save(tmp_path / "f.npy", images)
    out = load_images(str(tmp_path / "f.npy"), opts(4, data_range=data_range))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 0, 0, 0], expected)


def test_npz_picks_the_array_named_by_data_key(tmp_path):
    a = np.zeros((3, 4, 4, 3), np.uint8)
    b = np.full((2, 4, 4, 3), 7, np.uint8)
    np.savez(tmp_path / "two.npz", a=a, b=b)
    np.savez(tmp_path / "one.npz", only=b)
    assert load_images(str(tmp_path / "two.npz"), opts(4, data_key="b")).shape == (2, 4, 4, 3)
    assert load_images(str(tmp_path / "one.npz"), opts(4))[0, 0, 0, 0] == 7
    with pytest.raises(ConfigError, match=r"holds 2 arrays \['a', 'b'\]: choose one with --data-key"):
        load_images(str(tmp_path / "two.npz"), opts(4))
    with pytest.raises(ConfigError, match=r"has no array 'c'; it holds \['a', 'b'\]"):
        load_images(str(tmp_path / "two.npz"), opts(4, data_key="c"))


def test_resizing_and_gray_conversion_numbers():
    flat = np.full((2, 32, 32, 3), (200, 100, 50), np.uint8)
    out = conform(flat, 16, 3)
    assert out.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(out, np.full((2, 16, 16, 3), (200, 100, 50), np.uint8))  # flat stays flat
    # L = (299 R + 587 G + 114 B) / 1000, rounded, as PIL's convert("L")
    expected = round((299 * 200 + 587 * 100 + 114 * 50) / 1000)
    assert to_gray(np.array([[200, 100, 50]], np.uint8))[0, 0] == expected
    assert conform(flat, 32, 1).shape == (2, 32, 32, 1)


@pytest.mark.parametrize("array, kw, message", [
    (np.zeros((2, 4, 4, 3), np.int64), {}, "has dtype int64: expected uint8"),
    (np.zeros((2, 48), np.uint8), {}, r"has rank 2, shape \(2, 48\): expected \(N, H, W\) or \(N, H, W, C\)"),
    (np.zeros((2, 3, 8, 8), np.uint8), {}, r"expected 1 or 3 channels in the last axis \(channels first"),
    (np.zeros((2, 4, 4, 4), np.uint8), {}, "expected 1 or 3 channels"),
    (np.zeros((2, 4, 6, 3), np.uint8), {}, "expected square images, found 4x6"),
    (np.zeros((0, 4, 4, 3), np.uint8), {}, "holds no images"),
    (np.zeros((2, 4, 4, 3), np.float32), {}, "holds float32 data: give its range with --data-range 01"),
    (np.full((2, 4, 4, 3), 255.0, np.float32), {"data_range": "01"},
     r"has values in \[255, 255\], outside the \[0, 1\] that --data-range 01 declares"),
    (np.full((2, 4, 4, 3), 0.5, np.float32), {"data_range": "pm1"}, None),
    (np.full((2, 4, 4, 3), -0.5, np.float32), {"data_range": "01"}, r"outside the \[0, 1\]"),
    (np.full((2, 4, 4, 3), np.nan, np.float32), {"data_range": "01"}, "contains NaN or infinite values"),
    (np.zeros((2, 4, 4, 3), np.uint8), {"data_range": "01"}, "is uint8 already: --data-range 01 is for"),
])
def test_bad_arrays_say_what_was_expected_and_found(tmp_path, array, kw, message):
    np.save(tmp_path / "bad.npy", array)
    if message is None:
        load_images(str(tmp_path / "bad.npy"), opts(4, **kw))
        return
    with pytest.raises(ConfigError, match=message):
        load_images(str(tmp_path / "bad.npy"), opts(4, **kw))


def test_files_that_are_not_arrays(tmp_path):
    (tmp_path / "fake.npy").write_bytes(b"not numpy at all")
    (tmp_path / "fake.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"is not a .npy file: it does not start with the \\x93NUMPY magic"):
        load_images(str(tmp_path / "fake.npy"), opts(4))
    with pytest.raises(ConfigError, match="cannot read .* as a numeric .npz archive"):
        load_images(str(tmp_path / "fake.npz"), opts(4))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="numeric .npy"):
        load_images(str(tmp_path / "obj.npy"), opts(4))


# --- MNIST idx ------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_plain_and_gzipped(tmp_path, gz):
    train = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    test = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx3(tmp_path / f"train-images-idx3-ubyte{suffix}", train, gz=gz)
    write_idx3(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test, gz=gz)
    out = load_images(f"mnist:{tmp_path}", opts(28, 1))
    np.testing.assert_array_equal(out[..., 0], train)
    np.testing.assert_array_equal(load_images(f"mnist-test:{tmp_path}", opts(28, 1))[..., 0], test)
    assert load_images(f"mnist:{tmp_path}", opts(32, 3)).shape == (6, 32, 32, 3)


def test_mnist_bad_magic_wrong_length_and_missing(tmp_path):
    images = np.zeros((2, 28, 28), np.uint8)
    write_idx3(tmp_path / "train-images-idx3-ubyte", images, magic=0x00000801)
    with pytest.raises(ConfigError, match="bad magic number 0x00000801: expected 0x00000803"):
        load_images(f"mnist:{tmp_path}", opts(28, 1))
    data = struct.pack(">4I", 0x803, 3, 28, 28) + images.tobytes()  # says 3 images, holds 2
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data)
    with pytest.raises(ConfigError, match="wrong length: its header says 3 images of 28x28, 2368 bytes, "
                                          "but the file has 1584 bytes"):
        load_images(f"mnist:{tmp_path}", opts(28, 1))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08")
    with pytest.raises(ConfigError, match="shorter than the 16-byte idx3 header"):
        load_images(f"mnist:{tmp_path}", opts(28, 1))
    with pytest.raises(ConfigError, match=r"no t10k-images-idx3-ubyte\[.gz\] in"):
        load_images(f"mnist-test:{tmp_path}", opts(28, 1))


# --- CIFAR-10 binary ------------------------------------------------------------------------------

def test_cifar10_binary_records_are_chw(tmp_path):
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (4, 3))
    write_cifar(tmp_path / "data_batch_1.bin", a, np.arange(4) % 10)
    write_cifar(tmp_path / "data_batch_2.bin", b, np.arange(3) % 10)
    write_cifar(tmp_path / "test_batch.bin", a[:2], np.array([9, 0]))
    out = load_images(f"cifar10:{tmp_path}", opts(32))
    np.testing.assert_array_equal(out, np.concatenate([a, b]))
    np.testing.assert_array_equal(load_images(f"cifar10-test:{tmp_path}", opts(32)), a[:2])
    # a red-only record: the first 1024 pixel bytes are the red plane
    red = np.zeros((1, 32, 32, 3), np.uint8)
    red[..., 0] = 255
    write_cifar(tmp_path / "test_batch.bin", red, np.array([3]))
    assert (tmp_path / "test_batch.bin").read_bytes()[1:1025] == b"\xff" * 1024


def test_cifar10_wrong_length_bad_label_pickled_and_missing(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(b"\0" * 3000)
    with pytest.raises(ConfigError, match="wrong length: 3000 bytes is not a whole number of 3073-byte"):
        load_images(f"cifar10:{tmp_path}", opts(32))
    (tmp_path / "data_batch_1.bin").write_bytes(bytes([42]) + b"\0" * 3072)
    with pytest.raises(ConfigError, match="label byte 42 in record 0 is not a CIFAR-10 class 0-9"):
        load_images(f"cifar10:{tmp_path}", opts(32))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "data_batch_1").write_bytes(b"\x80\x04")
    with pytest.raises(ConfigError, match="pickled Python version, which jaxvae never loads"):
        load_images(f"cifar10:{pickled}", opts(32))
    with pytest.raises(ConfigError, match=r"no test_batch.bin in"):
        load_images(f"cifar10-test:{tmp_path}", opts(32))


# --- what --data names, and the config fields -----------------------------------------------------

def test_parse_source_errors(tmp_path):
    assert parse_source("shapes").kind == "shapes"
    assert parse_source(str(tmp_path)).kind == "folder"
    with pytest.raises(ConfigError, match="unknown data source 'nope': expected shapes, dsprites, a folder"):
        parse_source("nope")
    with pytest.raises(ConfigError, match="no such array file"):
        parse_source(str(tmp_path / "missing.npy"))
    with pytest.raises(ConfigError, match="mnist:DIR needs a folder.*scripts/mnist_to_idx.py"):
        parse_source(f"mnist:{tmp_path / 'missing'}")


@pytest.mark.parametrize("field, value, message", [
    ("data_range", "0255", "unknown data_range '0255': choose 01 or pm1"),
    ("on_bad_image", "ignore", "unknown on_bad_image 'ignore': choose skip or error"),
    ("background", "blurple", "unknown background colour 'blurple'"),
    ("channels", 4, "channels must be 1 .* or 3"),
    ("max_image_pixels", 0, "max_image_pixels must be a positive integer"),
])
def test_config_data_fields_are_validated(field, value, message):
    assert Config().background == "white" and Config().on_bad_image == "skip"
    with pytest.raises(ConfigError, match=message):
        Config(**{field: value})
    # the one DataOptions.validate, inherited by every command that reads data
    for make in (DataOptions, lambda **kw: PrepareArgs(src="shapes", out="c", **kw),
                 lambda **kw: ShowDataArgs(out="g.png", **kw)):
        with pytest.raises(ConfigError, match=message):
            make(**{field: value})


def test_the_data_options_are_declared_once():
    names = [f.name for f in dataclasses.fields(DataOptions)]
    for cls in (Config, PrepareArgs, ShowDataArgs):
        assert issubclass(cls, DataOptions) and [f.name for f in dataclasses.fields(cls)][:len(names)] == names
    assert DataOptions().max_image_pixels == MAX_IMAGE_PIXELS == ImageSettings(8, 3).max_pixels
