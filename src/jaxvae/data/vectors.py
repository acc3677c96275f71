"""Vector data: an (N, D) float array, from a .npy file or a .csv with a header row.

Vectors are not images: they arrive as float32 (N, D) arrays that already are the model's input
(standardized per column with `--standardize`), so `to_model_range` (uint8 -> [-1, 1]) never applies.
The config records D as `data_dim`; `resolve_config` fills it in before a run is created, so that
config.json alone rebuilds the model.

    c = resolve_config(c)          # data_dim = D when --data names vectors
    ds = load_vectors(c)           # VectorDataset: float32 train (N, D), val (M, D), and the stats
    batches = ds.batches(batch_size, seed, False, mesh)   # VectorBatches: endless, resumable, sharded
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np

from jaxvae.config import Config, ConfigError
from jaxvae.data import Dataset, split  # data/__init__ imports this module only inside load_dataset

SUFFIXES = (".npy", ".csv")


@dataclasses.dataclass(frozen=True, kw_only=True)
class VectorDataset(Dataset):
    """A Dataset of vectors: float32 rows that already are the model's input."""

    train: np.ndarray  # (N, D) float32, standardized when asked
    val: np.ndarray  # (M, D) float32, with the training split's statistics
    mean: np.ndarray  # (D,) what was subtracted (zeros without --standardize)
    std: np.ndarray  # (D,) what was divided by (ones without --standardize)
    columns: tuple[str, ...] = ()
    kind: ClassVar[str] = "vectors"

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Apply this dataset's standardization to other (K, D) vectors (e.g. a test file)."""
        return ((np.asarray(x, np.float64) - self.mean) / self.std).astype(np.float32)

    def model_input(self, rows) -> np.ndarray:
        """Rows of train or val (n, D) -> (n, D) float32: standardized already, as the model takes them."""
        return np.asarray(rows, np.float32)

    def batches(self, batch_size: int, seed: int, flip: bool, mesh):
        """The endless, resumable training batches (B, D) float32, sharded over the mesh's `data` axis."""
        return VectorBatches(self.train, batch_size, seed, flip, mesh)


def is_vector_source(spec: str) -> bool:
    """True when `spec` names vector data: a .csv, or a .npy holding a 2-D numeric array."""
    path = Path(spec)
    if path.suffix.lower() == ".csv":
        return True
    if path.suffix.lower() != ".npy" or not path.is_file():
        return False
    try:
        header = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return False  # not a plain array: let the image loader report it
    return header.ndim == 2 and header.dtype != np.uint8


def read_vectors(spec: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """(N, D) float64 values and the column names (.csv) of a vector file; ConfigError if unusable."""
    path = Path(spec)
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"{spec}: vector data must be a .npy or a .csv file")
    if not path.is_file():
        raise ConfigError(f"{spec}: no such file")
    columns: tuple[str, ...] = ()
    if path.suffix.lower() == ".npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ConfigError(f"{spec}: not a plain numeric .npy array ({e})") from None
        if raw.dtype.kind not in "fiub":
            raise ConfigError(f"{spec}: holds {raw.dtype} values; vector data must be numeric")
    else:
        columns, raw = _read_csv(path)
    if raw.ndim != 2:
        raise ConfigError(f"{spec}: vector data must be a 2-D (N, D) array, got shape {raw.shape}")
    if raw.shape[0] < 2 or raw.shape[1] < 1:
        raise ConfigError(f"{spec}: needs at least 2 rows and 1 column, got shape {raw.shape}")
    values = raw.astype(np.float64)
    if not np.all(np.isfinite(values)):
        row = int(np.argwhere(~np.isfinite(values))[0, 0])
        raise ConfigError(f"{spec}: row {row} holds a NaN or infinite value")
    return values, columns


def _read_csv(path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    with open(path) as f:
        header = f.readline().strip()
    columns = tuple(name.strip() for name in header.split(","))
    if not header:
        raise ConfigError(f"{path}: empty file")
    if all(_is_number(name) for name in columns):
        raise ConfigError(f"{path}: the first line must be a header naming the columns, got numbers")
    try:
        values = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    if values.size and values.shape[1] != len(columns):
        raise ConfigError(f"{path}: the header names {len(columns)} columns but the rows have {values.shape[1]}")
    return columns, values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def resolve_config(c: Config) -> Config:
    """c with data_dim set to D when c.data names vector data (checked against a given data_dim)."""
    if not is_vector_source(c.data):
        if c.standardize:
            raise ConfigError("--standardize is for vector data (an (N, D) .npy or .csv given as --data)")
        if c.vector_data:
            raise ConfigError(f"data_dim {c.data_dim} is set but --data {c.data} is not an (N, D) .npy or .csv")
        return c
    shape = _shape(c.data)
    if c.data_dim and c.data_dim != shape[1]:
        raise ConfigError(f"--data {c.data} has D = {shape[1]} columns but the config says data_dim {c.data_dim}")
    if c.arch in ("transformer", "conv"):
        raise ConfigError(f"--data {c.data} is vector data: use --arch mlp or --arch linear, not {c.arch}")
    return c.replace(data_dim=shape[1])


def _shape(spec: str) -> tuple[int, int]:
    if Path(spec).suffix.lower() == ".npy" and Path(spec).is_file():
        shape = np.load(spec, mmap_mode="r", allow_pickle=False).shape
        if len(shape) == 2:
            return shape
    return read_vectors(spec)[0].shape


def load_vectors(c: Config) -> VectorDataset:
    """The deterministic train/val split of c.data (same seeded split as images), float32."""
    values, columns = read_vectors(c.data)
    if c.data_dim and values.shape[1] != c.data_dim:
        raise ConfigError(f"--data {c.data} has D = {values.shape[1]} columns but the run expects {c.data_dim}")
    train, val = split(values, c.val_fraction)
    d = values.shape[1]
    mean, std = np.zeros(d), np.ones(d)
    if c.standardize:
        mean, std = train.mean(axis=0), train.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # a constant column stays constant (0) rather than NaN
    ds = VectorDataset(train=train, val=val, source=c.data, mean=mean, std=std, columns=columns)
    return dataclasses.replace(ds, train=ds.transform(train), val=ds.transform(val))


class VectorBatches:
    """Endless shuffled (B, D) float32 batches, resumable from get_state() (BatchIterator's interface).

    Epoch e is the permutation of (seed, e), cut into whole batches (the last partial one is left
    out), each batch's rows in index order. With a mesh, each process takes its rows of every global
    batch (parallel.local_rows) and yields the global (B, D) jax.Array sharded along B; without one,
    the numpy (B, D) batch. The same rows either way, for any number of devices and processes.
    """

    def __init__(self, vectors: np.ndarray, batch_size: int, seed: int, flip: bool = False, mesh=None):
        if flip:
            raise ConfigError("--flip mirrors images; it does not apply to vector data")
        if len(vectors) < batch_size:
            raise ConfigError(f"batch_size {batch_size} is larger than the dataset ({len(vectors)} rows)")
        self.vectors, self.batch_size, self.seed, self.mesh = vectors, batch_size, seed, mesh
        self.rows = slice(None)
        if mesh is not None:
            from jaxvae import parallel  # JAX: only for training

            parallel.check_batch(batch_size, mesh)
            self.rows = parallel.local_rows(batch_size, mesh)
        self.epoch, self.pos = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.vectors))

    def __iter__(self):
        return self

    def __next__(self):
        if self.pos + self.batch_size > len(self.vectors):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        idx = np.sort(self._order[self.pos: self.pos + self.batch_size])  # (B,)
        self.pos += self.batch_size
        local = self.vectors[idx[self.rows]]  # (B_local, D) float32, a copy
        if self.mesh is None:
            return local
        from jaxvae import parallel

        return parallel.shard_batch(local, self.batch_size, self.mesh)  # (B, D) sharded along B

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def set_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation(self.epoch)

    def close(self) -> None:
        """Nothing to stop (the rows are in memory); BatchIterator's interface."""
