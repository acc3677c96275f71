"""Data throughput: `prepare` on 256-px JPEGs, and the training loader from a 64-px cache.

    .venv/bin/python benchmarks/data.py [--jpegs 2000] [--cache-images 10000] [--batches 300]

Goals (2 cores): prepare >= 300 images/s; loader >= 20 000 images/s, so loading never limits
training. Also prints grain's per-record pipeline on the same cache, the design we did not take
(see src/jaxvae/data/pipeline.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import grain
import numpy as np
from PIL import Image

from jaxvae.data import BatchIterator
from jaxvae.data.images import ImageSettings
from jaxvae.data.prepare import open_cache, prepare_folder, write_array_cache


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Clock:
    """Wall and CPU time of a block: on a shared machine, images per CPU-second is the stable figure."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu

    def rates(self, n: int) -> str:
        return f"{n / self.wall:8.0f} images/s wall, {n / self.cpu:8.0f} images per CPU-second"


def make_jpegs(folder: str, n: int, size: int = 256) -> None:
    """Photo-like JPEGs: smooth gradients plus mild noise, quality 90."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a, b, c = rng.uniform(0, 1, 3)
        base = np.stack([a * x + (1 - a) * y, b * x * y, c * (1 - x)], -1) * 255
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def bench_prepare(tmp: str, n: int) -> str:
    src = os.path.join(tmp, "jpegs")
    os.makedirs(src)
    make_jpegs(src, n)
    with Clock() as clock:  # includes starting the worker processes
        prepare_folder(src, os.path.join(tmp, "prepared"), ImageSettings(64, 3), quiet=True)
    return clock.rates(n)


def bench_loader(images: np.ndarray, batches: int, batch_size: int = 64) -> str:
    it = BatchIterator(images, batch_size, seed=0, flip=True)
    for _ in range(10):  # warm up: thread start, page cache
        next(it)
    with Clock() as clock:
        for _ in range(batches):
            next(it)
    it.close()
    return clock.rates(batches * batch_size)


def bench_per_record(images: np.ndarray, batches: int, batch_size: int = 64) -> str:
    ds = (grain.MapDataset.source(images).shuffle(seed=0).repeat()
          .random_map(lambda x, rng: x[:, ::-1] if rng.random() < 0.5 else x, seed=1)
          .map(lambda x: x.astype(np.float32) / 127.5 - 1.0)
          .batch(batch_size, drop_remainder=True))
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))
    for _ in range(10):
        next(it)
    with Clock() as clock:
        for _ in range(batches):
            next(it)
    return clock.rates(batches * batch_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jpegs", type=int, default=2000)
    p.add_argument("--cache-images", type=int, default=10_000)
    p.add_argument("--batches", type=int, default=300)
    a = p.parse_args()
    print(f"cores available: {len(os.sched_getaffinity(0))}, load average before: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"prepare: {bench_prepare(tmp, a.jpegs)}  ({a.jpegs} JPEGs of 256x256 -> 64x64, goal >= 300/s)")
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (a.cache_images, 64, 64, 3), dtype=np.uint8)
        write_array_cache(pixels, os.path.join(tmp, "cache64"), "random")
        del pixels
        images, _ = open_cache(os.path.join(tmp, "cache64"))  # memory-mapped, as in training
        print(f"loader:  {bench_loader(images, a.batches)}  (batch 64 of 64x64x3, memory-mapped cache, "
              "flips on, goal >= 20000/s)")
        print(f"(grain per-record map, not used: {bench_per_record(images, a.batches)})")


if __name__ == "__main__":
    main()
