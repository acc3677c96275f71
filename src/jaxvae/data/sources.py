"""What `--data` names, and the readers for array-shaped sources.

  shapes            the embedded dataset
  dsprites          dSprites' factor grid, drawn on demand (data/dsprites.py); needs --channels 1
  DIR               a folder of images (prepared into a cache first), or a prepared cache
  celeba:DIR        CelebA's img_align_celeba folder, or its parent (prepared with its face crop)
  FILE.npy          uint8 (N, H, W[, C]), or float with --data-range 01|pm1; memory-mapped
  FILE.npz          the same, the array named by --data-key (optional when there is one, or one
                    beside a `factors` array: (N, F) integer factors, for evaluate --disentanglement)
  mnist:DIR         train-images-idx3-ubyte[.gz] (mnist-test:DIR: t10k-images-idx3-ubyte[.gz])
  cifar10:DIR       data_batch_1..5.bin, the *binary* version (cifar10-test:DIR: test_batch.bin)

Every array goes through `conform`, which checks it and returns uint8 (N, S, S, C); a bad array
raises ConfigError saying what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import os
import struct
import zipfile

import numpy as np
from PIL import Image

from jaxvae.config import ConfigError

PREFIXES = ("mnist", "mnist-test", "cifar10", "cifar10-test", "celeba")
CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue bytes
IDX3_UBYTE_MAGIC = 0x00000803  # two zero bytes, type 0x08 (unsigned byte), 3 dimensions
IDX1_UBYTE_MAGIC = 0x00000801  # the same, 1 dimension: MNIST's label files
FACTORS_KEY = "factors"  # an .npz's (N, F) integer factors of variation, one row per image
_CHUNK = 4096  # images converted at a time, so a big float array is never copied whole


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str  # shapes | dsprites | folder | cache | celeba | npy | npz | mnist | mnist-test | cifar10 | cifar10-test
    path: str


def is_cache(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "manifest.json")) and os.path.isfile(
        os.path.join(path, "images.npy"))


def parse_source(spec: str) -> Source:
    """Resolve a `--data` string, checking that what it names exists."""
    if spec in ("shapes", "dsprites"):
        return Source(spec, "")
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in PREFIXES:
        if not os.path.isdir(rest):
            hint = " (scripts/mnist_to_idx.py writes MNIST's idx files, offline)" if prefix.startswith("mnist") else ""
            raise ConfigError(f"{prefix}:DIR needs a folder, but {rest!r} is not one{hint}")
        if prefix == "celeba" and os.path.isdir(os.path.join(rest, "img_align_celeba")):
            rest = os.path.join(rest, "img_align_celeba")  # the dataset's root rather than its image folder
        return Source(prefix, rest)
    if spec.endswith((".npy", ".npz")):
        if not os.path.isfile(spec):
            raise ConfigError(f"no such array file: {spec}")
        return Source(spec[-3:], spec)
    if os.path.isdir(spec):
        return Source("cache" if is_cache(spec) else "folder", spec)
    raise ConfigError(f"unknown data source {spec!r}: expected shapes, dsprites, a folder, a .npy/.npz file, "
                      f"or one of {', '.join(p + ':DIR' for p in PREFIXES)}")


# --- readers: each returns the raw array, shapes (N, H, W) or (N, H, W, C) ----------------------

def read_npy(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ConfigError(f"{path} is not a .npy file: it does not start with the \\x93NUMPY magic")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:  # object arrays need pickle, which we never load
        raise ConfigError(f"cannot read {path} as a numeric .npy array: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path} as a .npy array: {e}") from None


def read_npz(path: str, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            if key:
                if key not in keys:
                    raise ConfigError(f"{path} has no array {key!r}; it holds {keys}")
            elif len(keys) == 1:
                key = keys[0]
            elif len(keys) == 2 and FACTORS_KEY in keys:  # images beside their factors
                key = next(k for k in keys if k != FACTORS_KEY)
            else:
                raise ConfigError(f"{path} holds {len(keys)} arrays {keys}: choose one with --data-key")
            return npz[key]
    except ConfigError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ConfigError(f"cannot read {path} as a numeric .npz archive: {e}") from None


def read_npz_factors(path: str) -> np.ndarray | None:
    """The `factors` array of an .npz, or None when it has none."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz[FACTORS_KEY] if FACTORS_KEY in npz.files else None
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ConfigError(f"cannot read {path} as a numeric .npz archive: {e}") from None


def _read_maybe_gzipped(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ConfigError(f"{path}: not a valid gzip file ({e})") from None
    return data


def read_idx_images(path: str) -> np.ndarray:
    """An idx3-ubyte file (the MNIST format): magic 0x00000803, three big-endian uint32 sizes."""
    data = _read_maybe_gzipped(path)
    if len(data) < 16:
        raise ConfigError(f"{path}: wrong length: {len(data)} bytes is shorter than the 16-byte idx3 header")
    magic, n, rows, cols = struct.unpack(">4I", data[:16])
    if magic != IDX3_UBYTE_MAGIC:
        raise ConfigError(f"{path}: bad magic number 0x{magic:08x}: expected 0x{IDX3_UBYTE_MAGIC:08x} "
                          "(idx3 unsigned-byte images)")
    expected = 16 + n * rows * cols
    if len(data) != expected:
        raise ConfigError(f"{path}: wrong length: its header says {n} images of {rows}x{cols}, "
                          f"{expected} bytes, but the file has {len(data)} bytes")
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)


def read_mnist(folder: str, test: bool) -> np.ndarray:
    stem = "t10k" if test else "train"
    names = [f"{stem}-images-idx3-ubyte", f"{stem}-images.idx3-ubyte"]
    for name in names + [n + ".gz" for n in names]:
        if os.path.isfile(os.path.join(folder, name)):
            return read_idx_images(os.path.join(folder, name))
    raise ConfigError(f"no {names[0]}[.gz] in {folder}; it holds {sorted(os.listdir(folder))[:10]}")


def read_cifar10_file(path: str) -> np.ndarray:
    size = os.path.getsize(path)
    if size == 0 or size % CIFAR_RECORD:
        raise ConfigError(f"{path}: wrong length: {size} bytes is not a whole number of "
                          f"{CIFAR_RECORD}-byte CIFAR-10 records (1 label byte + 3072 pixel bytes)")
    records = np.fromfile(path, np.uint8).reshape(-1, CIFAR_RECORD)  # (N, 3073)
    bad = np.flatnonzero(records[:, 0] > 9)
    if bad.size:
        raise ConfigError(f"{path}: label byte {records[bad[0], 0]} in record {bad[0]} is not a CIFAR-10 "
                          "class 0-9: not the CIFAR-10 binary version")
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW -> (N, 32, 32, 3)


def read_cifar10(folder: str, test: bool) -> np.ndarray:
    if os.path.isdir(os.path.join(folder, "cifar-10-batches-bin")):
        folder = os.path.join(folder, "cifar-10-batches-bin")
    pattern = "test_batch.bin" if test else "data_batch_*.bin"
    paths = sorted(glob.glob(os.path.join(folder, pattern)))
    if not paths:
        pickled = os.path.exists(os.path.join(folder, "data_batch_1")) or os.path.exists(
            os.path.join(folder, "batches.meta"))
        hint = (" (this looks like the pickled Python version, which jaxvae never loads: use the "
                "binary version, cifar-10-binary.tar.gz)" if pickled else "")
        raise ConfigError(f"no {pattern} in {folder}{hint}")
    return np.concatenate([read_cifar10_file(p) for p in paths])


def read_array_source(src: Source, data_key: str = "") -> np.ndarray:
    if src.kind == "npy":
        return read_npy(src.path)
    if src.kind == "npz":
        return read_npz(src.path, data_key)
    if src.kind in ("mnist", "mnist-test"):
        return read_mnist(src.path, test=src.kind == "mnist-test")
    if src.kind in ("cifar10", "cifar10-test"):
        return read_cifar10(src.path, test=src.kind == "cifar10-test")
    raise ValueError(f"{src.kind} is not an array source")


def read_labels(src: Source) -> np.ndarray | None:
    """The (N,) uint8 class labels of a source that has them, in its images' order, else None:
    mnist (its *-labels-idx1-ubyte[.gz] file, when beside the images) and cifar10 (each record's
    first byte)."""
    if src.kind in ("mnist", "mnist-test"):
        stem = "t10k" if src.kind == "mnist-test" else "train"
        for name in (f"{stem}-labels-idx1-ubyte", f"{stem}-labels.idx1-ubyte"):
            for path in (os.path.join(src.path, name), os.path.join(src.path, name + ".gz")):
                if os.path.isfile(path):
                    return _read_idx_labels(path)
        return None
    if src.kind in ("cifar10", "cifar10-test"):
        folder = src.path
        if os.path.isdir(os.path.join(folder, "cifar-10-batches-bin")):
            folder = os.path.join(folder, "cifar-10-batches-bin")
        pattern = "test_batch.bin" if src.kind == "cifar10-test" else "data_batch_*.bin"
        paths = sorted(glob.glob(os.path.join(folder, pattern)))  # read_cifar10's files, in its order
        return np.concatenate([np.fromfile(p, np.uint8).reshape(-1, CIFAR_RECORD)[:, 0] for p in paths])
    return None


def _read_idx_labels(path: str) -> np.ndarray:
    data = _read_maybe_gzipped(path)
    if len(data) < 8 or struct.unpack(">I", data[:4])[0] != IDX1_UBYTE_MAGIC:
        raise ConfigError(f"{path}: not an idx1-ubyte label file (magic 0x{IDX1_UBYTE_MAGIC:08x})")
    n = struct.unpack(">I", data[4:8])[0]
    if len(data) != 8 + n:
        raise ConfigError(f"{path}: wrong length: its header says {n} labels but it has {len(data) - 8} bytes")
    return np.frombuffer(data, np.uint8, offset=8).copy()


# --- conform: any accepted array -> uint8 (N, S, S, C) -------------------------------------------

def _float_to_uint8(x: np.ndarray, data_range: str) -> np.ndarray:
    x = x.astype(np.float32)
    x = x * 255.0 if data_range == "01" else (x + 1.0) * 127.5
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _check_float_range(images: np.ndarray, data_range: str, name: str) -> None:
    if not data_range:
        raise ConfigError(f"{name} holds {images.dtype} data: give its range with --data-range 01 "
                          "(values in [0, 1]) or pm1 (values in [-1, 1])")
    lo, hi = np.inf, -np.inf
    for i in range(0, len(images), _CHUNK):
        chunk = np.asarray(images[i:i + _CHUNK])
        if not np.isfinite(chunk).all():
            raise ConfigError(f"{name} contains NaN or infinite values")
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    want = (0.0, 1.0) if data_range == "01" else (-1.0, 1.0)
    tol = 1e-3
    if lo < want[0] - tol or hi > want[1] + tol:
        raise ConfigError(f"{name} has values in [{lo:.4g}, {hi:.4g}], outside the "
                          f"[{want[0]:g}, {want[1]:g}] that --data-range {data_range} declares")


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """(n, H, H, C) uint8 -> (n, size, size, C), Lanczos per image (antialiased when shrinking)."""
    out = np.empty((len(images), size, size, images.shape[-1]), np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        out[i] = np.asarray(pil.resize((size, size), Image.Resampling.LANCZOS)).reshape(size, size, -1)
    return out


def to_gray(images: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 1) with PIL's ITU-R 601-2 luma, L = (299 R + 587 G + 114 B) / 1000."""
    luma = images.astype(np.uint32) @ np.array([299, 587, 114], np.uint32)
    return ((luma + 500) // 1000).astype(np.uint8)[..., None]


def conform(images: np.ndarray, size: int, channels: int, data_range: str = "",
            name: str = "array") -> np.ndarray:
    """Check an array of images and return it as uint8 (N, size, size, channels).

    Accepts (N, H, W) or (N, H, W, C) with C in {1, 3} and H == W; uint8, or float whose range
    `data_range` gives. An array that already fits is returned as is (a memmap stays a memmap).
    """
    shape = tuple(images.shape)
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise ConfigError(f"{name} has dtype {images.dtype}: expected uint8 (or float with --data-range)")
    if images.dtype == np.uint8 and data_range:
        raise ConfigError(f"{name} is uint8 already: --data-range {data_range} is for float arrays only")
    if images.ndim == 3:
        images = images[..., None]
    elif images.ndim != 4:
        raise ConfigError(f"{name} has rank {len(shape)}, shape {shape}: expected (N, H, W) or (N, H, W, C)")
    n, h, w, c = images.shape
    if c not in (1, 3):
        hint = " (channels first? expected channels last, NHWC)" if images.shape[1] in (1, 3) else ""
        raise ConfigError(f"{name} has shape {shape}: expected 1 or 3 channels in the last axis{hint}")
    if h != w:
        raise ConfigError(f"{name} has shape {shape}: expected square images, found {h}x{w}")
    if n == 0:
        raise ConfigError(f"{name} has shape {shape}: it holds no images")
    if images.dtype != np.uint8:
        _check_float_range(images, data_range, name)
    if images.dtype == np.uint8 and h == size and c == channels:
        return images
    out = np.empty((n, size, size, channels), np.uint8)
    for i in range(0, n, _CHUNK):
        chunk = np.asarray(images[i:i + _CHUNK])
        if chunk.dtype != np.uint8:
            chunk = _float_to_uint8(chunk, data_range)
        if c == 3 and channels == 1:
            chunk = to_gray(chunk)
        if h != size:
            chunk = _resize(chunk, size)
        if chunk.shape[-1] == 1 and channels == 3:
            chunk = np.repeat(chunk, 3, axis=-1)
        out[i:i + _CHUNK] = chunk
    return out
