"""Data with known factors of variation: what the disentanglement metrics draw from.

A ground-truth dataset has F discrete factors; factor j takes the values 0 .. factor_sizes[j] - 1.
The metrics need three things of it (disentanglement_lib's GroundTruthData, plus one method that
lets a finite table stand in for a generator):

    sample_factors(n, rng)              (n, F) int: factors drawn from the data distribution
    sample_with_fixed(k, values, rng)   (n, F) int: the same, conditioned on factor k == values (n,)
    observations(factors, rng)          (n, ...) what the encoder takes (uint8 images here)

`FactorData` is a generator over a full factorial grid (uniform, factors independent), so
conditioning is drawing the other factors afresh: this is disentanglement_lib's protocol exactly.
`FactorTable` is a finite set of (image, factors) rows, e.g. an .npz with a `factors` array: it
draws rows, and conditions by drawing among the rows whose factor k has the value asked for.
"""

from __future__ import annotations

import numpy as np

from jaxvae.config import ConfigError


def integer_factors(factors, name: str = "factors") -> np.ndarray:
    """factors as an (N, F) int64 array; ConfigError unless every value is a whole number.

    The metrics need discrete factors (class labels), and guessing bins for a continuous factor
    would change the scores silently, so non-integer values are refused rather than discretised.
    """
    f = np.asarray(factors)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2:
        raise ConfigError(f"{name} must have shape (N, F), got {f.shape}")
    if f.dtype.kind in "iub":
        return f.astype(np.int64)
    if f.dtype.kind != "f":
        raise ConfigError(f"{name} have dtype {f.dtype}: expected integer factor indices")
    if not np.all(np.isfinite(f)) or not np.all(f == np.round(f)):
        raise ConfigError(f"{name} hold non-integer values: the metrics need discrete factors (class indices); "
                          "discretise continuous factors first, e.g. with np.digitize")
    return f.astype(np.int64)


class FactorData:
    """A generator over a full factorial grid: subclasses set factor_names, factor_sizes and observations()."""

    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, F) int64, every factor uniform and independent."""
        return np.stack([rng.integers(0, k, n) for k in self.factor_sizes], axis=-1).astype(np.int64)

    def sample_with_fixed(self, k: int, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n, F): factor k set to values (n,), the others drawn afresh."""
        f = self.sample_factors(len(values), rng)
        f[:, k] = values
        return f

    def observations(self, factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class FactorTable(FactorData):
    """A finite set of observations with their factors, e.g. an .npz's `images` and `factors`.

    Each column of factors is mapped to 0 .. K-1 by its sorted distinct values (value_labels keeps
    them), so any integer labels work. Draws pick rows uniformly, so the factors keep the table's
    own joint distribution, correlations included.
    """

    def __init__(self, images, factors, names: tuple[str, ...] = ()):
        f = integer_factors(factors)
        if len(f) != len(images):
            raise ConfigError(f"the factors have {len(f)} rows but there are {len(images)} images: "
                              "one row of factors per image is needed")
        if len(f) == 0:
            raise ConfigError("the factors table is empty")
        labels, codes = [], []
        for column in f.T:
            values, inverse = np.unique(column, return_inverse=True)
            labels.append(values)
            codes.append(inverse)
        self.images = images
        self.codes = np.stack(codes, axis=-1)  # (N, F) in 0 .. K_j - 1
        self.value_labels = labels
        self.factor_sizes = tuple(len(v) for v in labels)
        self.factor_names = tuple(names) or tuple(f"factor_{j}" for j in range(f.shape[1]))
        # Rows grouped by their whole factor tuple: a lookup from factors back to observations.
        self._keys = np.ravel_multi_index(self.codes.T, self.factor_sizes)  # (N,)
        self._by_key = np.argsort(self._keys, kind="stable")
        self._sorted_keys = self._keys[self._by_key]
        # Rows grouped by each factor's value: the conditional draws.
        self._by_value = [np.argsort(c, kind="stable") for c in self.codes.T]
        self._value_start = [np.searchsorted(c[o], np.arange(k + 1)) for c, o, k in
                             zip(self.codes.T, self._by_value, self.factor_sizes, strict=True)]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.codes[rng.integers(0, len(self.codes), n)]

    def sample_with_fixed(self, k: int, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        values = np.asarray(values, np.int64)
        start, stop = self._value_start[k][values], self._value_start[k][values + 1]
        pick = start + (rng.random(len(values)) * (stop - start)).astype(np.int64)  # a row with that value
        return self.codes[self._by_value[k][pick]]

    def observations(self, factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One row with exactly these factors for each (drawn at random among equals)."""
        keys = np.ravel_multi_index(np.asarray(factors, np.int64).T, self.factor_sizes)
        start = np.searchsorted(self._sorted_keys, keys, side="left")
        stop = np.searchsorted(self._sorted_keys, keys, side="right")
        if np.any(stop == start):
            raise ValueError("no row of the table has some of these factors")
        rows = self._by_key[start + (rng.random(len(keys)) * (stop - start)).astype(np.int64)]
        order = np.argsort(rows, kind="stable")  # read a memmap front to back
        found = np.asarray(self.images[rows[order]])
        out = np.empty_like(found)
        out[order] = found
        return out
