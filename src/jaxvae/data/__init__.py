"""Data: where images come from, and the batches training sees.

Interface used by the rest of jaxvae:
  load_dataset(config) -> Dataset  with uint8 (N, S, S, C) train and val arrays. For a memory-mapped
      source (a prepared cache, a .npy) they are `Rows` views over the memmap, so nothing is
      loaded into RAM; index them like arrays (int, slice or int array), or np.asarray() them.
      Vector data gives its subclass VectorDataset (data/vectors.py), float32 (N, D) rows.
  dataset.model_input(rows)  rows of train or val as the model takes them ([-1, 1] images, or vectors).
  dataset.batches(batch_size, seed, flip, mesh)  the endless, resumable training batches, sharded
      over the mesh; get_state() / set_state() restore their exact position. Images: through
      jaxvae.parallel.make_batches over a grain BatchIterator (data/pipeline.py), the same batches
      (same order, same flips, bit for bit) for any number of devices and processes.
  to_model_range / to_uint8 convert between uint8 pixels and the model's [-1, 1].

Modules: sources (what --data names, array readers), images (one file -> one array), prepare
(folder -> cache), pipeline (grain batches), commands (`jaxvae prepare`, `jaxvae show-data`),
shapes and dsprites (the embedded data), factors (data with known factors of variation).

Data with known factors: `ground_truth(spec, options)` is the FactorData that the disentanglement
metrics draw from (dsprites, shapes, or an .npz with a `factors` array), and a Dataset of dsprites
or of such an .npz carries the (N, F) integer factors of its train and val images.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from jaxvae.config import Config, ConfigError, DataOptions
from jaxvae.data import sources
from jaxvae.data.dsprites import DSprites, DSpritesImages
from jaxvae.data.factors import FactorData, FactorTable, integer_factors
from jaxvae.data.images import ImageSettings
from jaxvae.data.prepare import ensure_cache, open_cache
from jaxvae.data.shapes import Shapes, make_shapes

SHAPES_COUNT = 6000  # images rendered for `--data shapes`, split into train and val
SHAPES_SEED = 1234  # their seed (the factors of image i: shapes.shape_factors(SHAPES_COUNT, SHAPES_SEED))


def __getattr__(name: str) -> Any:
    # Imported on first use: grain takes ~1 s to import, and `prepare`'s spawned worker
    # processes import this package without needing it.
    if name == "BatchIterator":
        from jaxvae.data.pipeline import BatchIterator
        return BatchIterator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The train and held-out examples of a run, and how they become model input and batches.

    Images here; vector data is the subclass data.vectors.VectorDataset (kind "vectors"), which
    load_dataset picks when the config says so (Config.vector_data, the one test).
    """

    train: np.ndarray  # (N, S, S, C) uint8, or Rows of a memmap
    val: np.ndarray  # (M, S, S, C) uint8, or Rows of a memmap
    source: str
    train_factors: np.ndarray | None = None  # (N, F) integer factors of the train images, where known
    val_factors: np.ndarray | None = None  # (M, F) the same for val
    kind: ClassVar[str] = "images"

    def model_input(self, rows) -> np.ndarray:
        """Rows of train or val (n, S, S, C) uint8 -> what the model takes, (n, S, S, C) float32 in [-1, 1]."""
        return to_model_range(rows)

    def batches(self, batch_size: int, seed: int, flip: bool, mesh):
        """The endless, resumable training batches (B, S, S, C) float32, sharded over the mesh's `data` axis
        (parallel.make_batches: on the devices when the set fits there)."""
        from jaxvae import parallel  # JAX: imported only when training

        return parallel.make_batches(self.train, batch_size, seed, flip, mesh)


class Rows:
    """Selected rows of a (memory-mapped) array, without reading them: a split that stays on disk.

    Indexing returns ndarrays: rows[i] is (S, S, C); rows[a:b] and rows[int_array] are (n, S, S, C).
    """

    def __init__(self, base: np.ndarray, rows: np.ndarray):
        self.base, self.rows = base, np.asarray(rows, np.int64)
        self.shape = (len(self.rows),) + tuple(base.shape[1:])
        self.dtype, self.ndim = base.dtype, base.ndim

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.base[self.rows[index]])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], as in the chapter."""
    return np.asarray(images).astype(np.float32) / 127.5 - 1.0


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255], clipped."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


RANGE_TOLERANCE = 1e-3  # float images may overshoot [-1, 1] by rounding, not by a different convention


def as_model_images(x, data_range: str = "", name: str = "x") -> np.ndarray:
    """Images as the model takes them, float32 in [-1, 1], by one documented rule:

      uint8             [0, 255], converted (to_model_range);
      float, "pm1"      already [-1, 1];
      float, "01"       [0, 1], converted by x * 2 - 1;
      float, "" (auto)  [-1, 1], but an array with no negative value is refused as ambiguous: it reads
                        the same as [0, 1] data, which would silently be taken for the wrong range.
    Anything else (other dtypes, floats outside the range) raises ConfigError naming range and dtype.
    """
    x = np.asarray(x)
    if data_range not in ("", "pm1", "01"):
        raise ConfigError(f"unknown data_range {data_range!r}: choose 01 or pm1")
    if x.dtype == np.uint8:
        return to_model_range(x)
    if x.dtype.kind != "f":
        raise ConfigError(f"{name} has dtype {x.dtype}: give uint8 images in [0, 255] or float images in [-1, 1]")
    x = x.astype(np.float32)
    if x.size == 0 or not np.isfinite(x).all():
        return x  # the caller's shape and NaN checks name these
    lo, hi = float(x.min()), float(x.max())
    low = 0.0 if data_range == "01" else -1.0
    if lo < low - RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        hint = " (0..255 values? pass them as uint8)" if hi > 2 else ""
        raise ConfigError(f"{name} is {x.dtype} with values in [{lo:.3g}, {hi:.3g}]: float images must be in "
                          f"[{low:g}, 1]{hint}")
    if data_range == "01":
        return x * 2.0 - 1.0
    if data_range == "" and lo >= 0.0:
        raise ConfigError(f"{name} is {x.dtype} with no value below 0 ([{lo:.3g}, {hi:.3g}]): float images are "
                          "read as [-1, 1], and these look like [0, 1] data; pass data_range='01' to convert "
                          "them (x * 2 - 1), or 'pm1' if they are [-1, 1], or uint8 images in [0, 255]")
    return x


def split(images: np.ndarray, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic held-out split: a seeded permutation, the last val_fraction held out.

    Both parts keep the source's order. A memmap is split into two `Rows` views (nothing read);
    an in-memory array into two copies.
    """
    train_idx, val_idx = split_indices(len(images), val_fraction, seed)
    if isinstance(images, (np.memmap, DSpritesImages)):  # views: nothing is read (or drawn)
        return Rows(images, train_idx), Rows(images, val_idx)
    return images[train_idx], images[val_idx]


def split_indices(n: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The sorted (train, val) row indices of `split`."""
    n_val = max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0
    if n_val >= n:
        raise ConfigError(f"val_fraction {val_fraction} of {n} images leaves no training images")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n - n_val]), np.sort(order[n - n_val:])


def load_images(spec: str, o: DataOptions, *, quiet: bool = False) -> np.ndarray:
    """Every image that `spec` names, as uint8 (N, S, S, C) (a read-only memmap where possible)."""
    src = sources.parse_source(spec)
    if src.kind == "shapes":
        return make_shapes(SHAPES_COUNT, o.image_size, seed=SHAPES_SEED, channels=o.channels)[0]
    if src.kind == "dsprites":
        _check_dsprites(o)
        return DSpritesImages(o.image_size)
    if src.kind in ("folder", "celeba"):
        folder = ensure_cache(src.path, image_settings(o, src.kind), cache_dir=o.cache_dir, on_bad_image=o.on_bad_image,
                              quiet=quiet)
        return open_cache(folder)[0]
    if src.kind == "cache":
        images, manifest = open_cache(src.path)
        found = manifest["settings"]
        if (found["size"], found["channels"]) != (o.image_size, o.channels):
            raise ConfigError(f"the cache {src.path} holds {found['size']}-px {found['channels']}-channel "
                              f"images, but --image-size {o.image_size} --channels {o.channels} is asked "
                              "for: prepare it again with those settings")
        return images
    raw = sources.read_array_source(src, o.data_key)
    return sources.conform(raw, o.image_size, o.channels, o.data_range, name=spec)


def image_settings(o: DataOptions, source_kind: str) -> ImageSettings:
    """What the decoded pixels of a folder (source kind "folder" or "celeba") depend on."""
    return ImageSettings(o.image_size, o.channels, o.background, o.max_image_pixels,
                         crop="celeba" if source_kind == "celeba" else "center")


def _check_dsprites(o: DataOptions) -> None:
    if o.channels != 1:
        raise ConfigError(f"dsprites images are binary, 1 channel: pass --channels 1 (got --channels {o.channels}); "
                          "dSprites' own size is --image-size 64")


def source_factors(spec: str, o: DataOptions, count: int) -> np.ndarray | None:
    """The (N, F) integer factors of the `count` images of `spec`, in their order, where it has them
    (dsprites, an .npz with a `factors` array); None otherwise. ConfigError if N != count."""
    src = sources.parse_source(spec)
    if src.kind == "dsprites":
        return DSpritesImages(o.image_size).factors()
    if src.kind != "npz":
        return None
    factors = sources.read_npz_factors(src.path)
    if factors is None:
        return None
    factors = integer_factors(factors, name=f"the factors in {spec}")
    if len(factors) != count:
        raise ConfigError(f"{spec}: its factors array has {len(factors)} rows but there are {count} images")
    return factors


def ground_truth(spec: str, o: DataOptions) -> FactorData | None:
    """What the disentanglement metrics draw from: the data's factors and a way to render (or look up)
    images for given factors. None for data without known factors."""
    src = sources.parse_source(spec)
    if src.kind == "dsprites":
        _check_dsprites(o)
        return DSprites(o.image_size)
    if src.kind == "shapes":
        return Shapes(o.image_size, o.channels)
    if src.kind != "npz" or sources.read_npz_factors(src.path) is None:
        return None
    images = load_images(spec, o, quiet=True)
    return FactorTable(images, source_factors(spec, o, len(images)))


def load_dataset(c: Config) -> Dataset:
    """Train and validation examples for a config: `val_data` when given, else a val_fraction split.

    Vector data (c.vector_data once data.vectors.resolve_config has set D) is a VectorDataset."""
    from jaxvae.data import vectors  # (N, D) float arrays: data/vectors.py

    c = c if c.vector_data else vectors.resolve_config(c)  # D is set when the run was made
    if c.vector_data:
        return vectors.load_vectors(c)
    images = load_images(c.data, c)  # a Config is DataOptions (it inherits their fields)
    factors = source_factors(c.data, c, len(images))
    if c.val_data:
        train, val = images, load_images(c.val_data, c)
        val_factors = source_factors(c.val_data, c, len(val))
    else:
        train, val = split(images, c.val_fraction)
        val_factors = None
        if factors is not None:
            train_idx, val_idx = split_indices(len(factors), c.val_fraction)
            factors, val_factors = factors[train_idx], factors[val_idx]
    return Dataset(train=train, val=val, source=c.data, train_factors=factors, val_factors=val_factors)
