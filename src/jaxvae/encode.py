"""Encode a dataset to latents, in bulk, and the latent scale factor of a model.

    latents = encode_dataset(vae, images, what="both", seed=0)   # dict of (N, Z) float32 arrays
    scale = latent_scale(latents["mean"])                        # 1 / std of the posterior means

Streaming: examples are read, converted to float32 and encoded one batch at a time, so only a
(B, S, S, C) float32 batch and the (N, Z) outputs are ever in memory (a memory-mapped uint8 source
stays on disk). The batch is sharded over every local device (a `data` mesh, jaxvae.parallel) with
the parameters replicated; the last batch is zero-padded to the full size and cut after, so one
compilation serves every batch. Row i of every output is example i of the source: the order is the
source's own, whatever the batch size or the device count.

Samples: example i's noise is drawn from fold_in(key(seed), i), so a sample depends on the seed and
the example alone, not on the batch size, the device count or where the example fell in a batch.

The latent scale (latent diffusion's `scale_factor`): latent_std is the standard deviation of the
posterior means over every example and every latent dimension pooled (the std of mean.ravel(), about
its overall mean, as latent diffusion computes it), and latent_scale = 1 / latent_std is what you
multiply latents by so that they have unit variance. One scalar, not one per dimension: a diffusion
model's noise schedule assumes one scale for every coordinate.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxvae import parallel
from jaxvae.atomic import atomic_path
from jaxvae.config import Config, ConfigError

WHAT = ("mean", "sample", "both")
DEFAULT_BATCH = 256
# The latent scale of a run (export, TrainedVAE.latent_scale) is measured over at most this many
# training examples, evenly strided over the training split so that a sorted source is covered.
LATENT_SCALE_EXAMPLES = 4096


# --- the latent scale --------------------------------------------------------------------------

@dataclasses.dataclass
class Moments:
    """Streaming count, mean and sum of squared deviations (Chan et al.'s pairwise update) in float64."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, np.float64).ravel()
        if not v.size:
            return
        n, mean = v.size, float(v.mean())
        m2 = float(np.sum(np.square(v - mean)))
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else float("nan")


def latent_std(mean: np.ndarray) -> float:
    """(N, Z) posterior means -> their standard deviation over all N * Z values pooled."""
    m = Moments()
    m.add(mean)
    return m.std


def scale_from_std(std: float) -> float | None:
    """latent_scale = 1 / latent_std; None when the means do not vary (a fully collapsed posterior)."""
    return 1.0 / std if std > 0 and math.isfinite(std) else None


def latent_scale(mean: np.ndarray) -> float | None:
    """(N, Z) posterior means -> the factor that gives them unit variance, 1 / latent_std(mean)."""
    return scale_from_std(latent_std(mean))


def scale_subset(n: int, limit: int = LATENT_SCALE_EXAMPLES) -> np.ndarray:
    """The (at most `limit`) example indices the latent scale of a run is measured on: evenly strided."""
    if n <= limit:
        return np.arange(n)
    return np.floor(np.arange(limit) * (n / limit)).astype(np.int64)  # increasing, distinct, < n


def run_latent_scale(vae, data: str = "") -> tuple[float | None, str]:
    """The latent scale of a model over its run's training data (or over `data`, any --data source).

    Returns (latent_scale, a description of the examples it was measured on).
    """
    x = load_examples(vae.config, data) if data else _training_examples(vae.config)
    idx = scale_subset(len(x))
    subset = x[idx] if len(idx) < len(x) else x
    means = encode_dataset(vae, subset, what="mean", progress=False)["mean"]
    where = data or f"the training split of {vae.config.data}"
    how = "all" if len(idx) == len(x) else f"{len(idx)} evenly strided of the"
    return latent_scale(means), f"{how} {len(x)} examples of {where}"


def _training_examples(c: Config):
    from jaxvae import data as data_lib

    return data_lib.load_dataset(c).train


# --- which examples -----------------------------------------------------------------------------

def load_examples(c: Config, spec: str, data_key: str = "", data_range: str = ""):
    """Every example of the --data source `spec`, in its own order, as the run `c` takes them.

    Images: uint8 (N, S, S, C), a memmap view where the source allows (data.load_dataset with the
    run's settings, val_fraction 0). Folders are prepared to the run's image size as training does; an
    array whose example shape is not the run's is refused, naming both. Vectors: (N, D) float32,
    standardized with the run's own training statistics.
    """
    from jaxvae import data as data_lib
    from jaxvae.data import sources, vectors

    want = c.data_shape
    vector_source = vectors.is_vector_source(spec)
    if c.vector_data:
        if not vector_source:
            raise ConfigError(f"--data {spec} does not hold (N, D) vectors, but the run takes examples of shape {want}")
        values, _ = vectors.read_vectors(spec)
        if values.shape[1:] != want:
            raise ConfigError(f"--data {spec} has examples of shape {values.shape[1:]}, but the run takes {want}")
        return data_lib.load_dataset(c).transform(values)
    if vector_source:
        shape = np.load(spec, mmap_mode="r", allow_pickle=False).shape[1:] if spec.endswith(".npy") else "(D,)"
        raise ConfigError(f"--data {spec} holds vectors of shape {shape}, but the run takes images of shape {want}")
    options = c.replace(data=spec, val_data="", val_fraction=0.0, data_key=data_key or c.data_key,
                        data_range=data_range or c.data_range)
    src = sources.parse_source(spec)
    if src.kind not in ("shapes", "folder", "celeba", "cache"):  # an array: compare before conforming
        raw = sources.read_array_source(src, options.data_key)
        shape = tuple(raw.shape[1:]) + ((1,) if raw.ndim == 3 else ())
        if shape != want:
            raise ConfigError(f"--data {spec} has examples of shape {shape}, but the run takes {want}")
    return data_lib.load_dataset(options).train


def source_extras(c: Config, spec: str) -> dict[str, np.ndarray]:
    """What the source knows about its examples, in their order: `factors` (N, F) and `factor_names`
    (F,) for shapes, `labels` (N,) for mnist and cifar10. Empty for other sources."""
    from jaxvae import data as data_lib
    from jaxvae.data import shapes, sources

    if c.vector_data:
        return {}
    src = sources.parse_source(spec)
    if src.kind == "shapes":
        names, table = shapes.factor_table(shapes.shape_factors(data_lib.SHAPES_COUNT, seed=data_lib.SHAPES_SEED))
        return {"factors": table, "factor_names": np.asarray(names)}
    labels = sources.read_labels(src)
    return {} if labels is None else {"labels": labels}


# --- encoding ----------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("graphdef", "sample"))
def _encode_batch(graphdef, params, x, idx, key, *, sample: bool):
    """x (B, *shape), idx (B,) int32 -> mean, log_std (B, Z) and, when asked, one sample z (B, Z)."""
    q = nnx.merge(graphdef, params).encode(x)
    out = {"mean": q.mean, "log_std": q.log_std}
    if sample:
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)  # (B,) keys: example i's own
        eps = jax.vmap(lambda k: jax.random.normal(k, q.mean.shape[1:], q.mean.dtype))(keys)  # (B, Z)
        out["sample"] = q.mean + q.std * eps
    return out


def _to_model_input(rows: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 [-1, 1] (bit for bit data.to_model_range); vectors as float32."""
    if rows.dtype == np.uint8:
        out = np.empty(rows.shape, np.float32)
        np.divide(rows, np.float32(127.5), out=out, dtype=np.float32)
        out -= 1.0
        return out
    return np.asarray(rows, np.float32)


def encode_dataset(vae, data, what: str = "mean", seed: int = 0, batch_size: int = DEFAULT_BATCH,
                   progress: bool = True, devices=None) -> dict[str, np.ndarray]:
    """Encode every example of `data`, in order, batched and data-parallel over the local devices.

    Args:
      vae: a TrainedVAE (jaxvae.load).
      data: (N, *shape) uint8 images (an array, memmap or Rows view) or float32 examples in the model's
        range (vectors as the model was trained on them).
      what: mean (mean and log_std) | sample (one posterior sample) | both.
      seed: the samples' seed (example i draws from fold_in(key(seed), i)).
      batch_size: examples per device call, rounded up to a multiple of the device count.
      devices: the devices to shard over (default: every local device).
    Returns: {"mean", "log_std"} (N, Z) float32 (whatever `what` is: they come with every sample),
      "sample" (N, Z) unless what is mean, and "index" (N,) int64, the source's order.
    """
    if what not in WHAT:
        raise ConfigError(f"unknown --what {what!r}: choose one of {', '.join(WHAT)}")
    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    c, n = vae.config, len(data)
    if n == 0:
        raise ConfigError("the data holds no examples")
    if tuple(data.shape[1:]) != c.data_shape:
        raise ConfigError(f"the data has examples of shape {tuple(data.shape[1:])}, but the model takes {c.data_shape}")
    mesh = parallel.data_mesh(jax.local_devices() if devices is None else devices)
    d = mesh.devices.size
    b = min(-(-batch_size // d), -(-n // d)) * d  # a multiple of d, no larger than N needs
    graphdef, params = nnx.split(vae.model)
    params = parallel.replicate(params, mesh)
    sharding = parallel.batch_sharding(mesh)
    key = jax.random.key(seed)
    names = ["mean", "log_std"] + (["sample"] if what != "mean" else [])  # the means are always computed
    out = {name: np.empty((n, c.z_dim), np.float32) for name in names}

    bar = _progress(n, progress)

    def collect(pending):
        lo, hi, result = pending
        for name in names:
            out[name][lo:hi] = np.asarray(jax.device_get(result[name]))[: hi - lo]
        bar.update(hi - lo)

    pending = None
    for lo in range(0, n, b):
        hi = min(n, lo + b)
        x = np.zeros((b, *c.data_shape), np.float32)
        x[: hi - lo] = _to_model_input(np.asarray(data[lo:hi]))
        idx = np.arange(lo, lo + b, dtype=np.int32)  # padding rows draw noise of their own, then go
        result = _encode_batch(graphdef, params, jax.device_put(x, sharding), jax.device_put(idx, sharding), key,
                               sample=what != "mean")
        if pending is not None:  # fetch the previous batch while this one runs (dispatch is asynchronous)
            collect(pending)
        pending = (lo, hi, result)
    collect(pending)
    bar.close()
    out["index"] = np.arange(n, dtype=np.int64)
    return out


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="ex", desc="encode", disable=not enabled, leave=False, dynamic_ncols=True)


# --- the output file ---------------------------------------------------------------------------

def check_output(out: str | os.PathLike, overwrite: bool, suffix: str) -> Path:
    """encode's and export's --out, by the one output policy (outputs.output_file): never inside a run,
    an existing file only with --overwrite, and never a file that jaxvae did not write."""
    from jaxvae.outputs import output_file

    return output_file(out, f"latents{suffix}" if suffix == ".npz" else f"model{suffix}", suffixes=(suffix,),
                       overwrite=overwrite)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed .npz atomically: a crash leaves the old file (or none), never half of one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
