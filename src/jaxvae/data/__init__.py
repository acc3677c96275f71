"""Data: where images come from, and the batches training sees.

Interface used by the rest of jaxvae:
  load_dataset(config) -> Dataset  with uint8 (N, S, S, C) train and val arrays (maybe memmaps)
  BatchIterator(images, batch_size, seed, flip)  an endless, resumable iterator of float32
      batches in [-1, 1]; get_state() / set_state() restore its exact position.
  to_model_range / to_uint8 convert between uint8 pixels and the model's [-1, 1].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxvae.config import Config, ConfigError
from jaxvae.data.shapes import make_shapes

SHAPES_COUNT = 6000  # images rendered for `--data shapes`, split into train and val


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: np.ndarray  # (N, S, S, C) uint8
    val: np.ndarray  # (M, S, S, C) uint8
    source: str
    kind: str = "images"  # vector data comes as a data.vectors.VectorDataset, kind "vectors"


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], as in the chapter."""
    return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255], clipped."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def split(images: np.ndarray, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic held-out split: a seeded permutation, the last val_fraction held out."""
    n = len(images)
    n_val = max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0
    order = np.random.default_rng(seed).permutation(n)
    train_idx, val_idx = np.sort(order[: n - n_val]), np.sort(order[n - n_val:])
    return images[train_idx], images[val_idx]


def load_dataset(c: Config) -> Dataset:
    from jaxvae.data import vectors  # (N, D) float arrays: data/vectors.py

    if c.data_dim or vectors.is_vector_source(c.data):
        return vectors.load_vectors(c)
    if c.data == "shapes":
        images, _ = make_shapes(SHAPES_COUNT, c.image_size, seed=1234, channels=c.channels)
        train, val = split(images, c.val_fraction)
        return Dataset(train=train, val=val, source="shapes")
    raise ConfigError(f"unknown data source {c.data!r}")


class BatchIterator:
    """Endless shuffled batches of float32 images in [-1, 1], resumable from get_state()."""

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, flip: bool = False):
        if len(images) < batch_size:
            raise ConfigError(f"batch_size {batch_size} is larger than the dataset ({len(images)} images)")
        self.images, self.batch_size, self.seed, self.flip = images, batch_size, seed, flip
        self.epoch, self.pos = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.images))

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        if self.pos + self.batch_size > len(self.images):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        idx = np.sort(self._order[self.pos: self.pos + self.batch_size])
        batch = to_model_range(self.images[idx])
        if self.flip:
            rng = np.random.default_rng([self.seed, self.epoch, self.pos, 1])
            mirror = rng.random(len(batch)) < 0.5
            batch[mirror] = batch[mirror, :, ::-1]
        self.pos += self.batch_size
        return batch

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def set_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation(self.epoch)
