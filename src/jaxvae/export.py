"""A trained model as one flat safetensors file, loadable without its run directory.

    jaxvae export RUN --out model.safetensors
    vae = jaxvae.load("model.safetensors")      # the same TrainedVAE as jaxvae.load(RUN)

Why safetensors: a standard format that any framework reads (safetensors' own readers for NumPy,
PyTorch, JAX, Rust, ...), with no pickle (a JSON header, then raw little-endian tensor bytes), memory
mappable, and its NumPy interface needs no torch.

The file:
  tensors   every array of the model's state, float32, named by its path with dots:
            "encoder.blocks.0.qkv.kernel" is model.encoder.blocks[0].qkv.kernel
  metadata  (safetensors' string -> string header)
    jaxvae_format   EXPORT_FORMAT: a reader refuses a newer one
    jaxvae_version  the writer's version
    config          the resolved Config as JSON (it rebuilds exactly this model)
    latent_scale    JSON number or null: 1 / std of the posterior means (see encode.py)
    latent_scale_examples  what it was measured on
    checkpoint      which of the run's checkpoints the parameters come from: its step and why (best, latest)
    sha256          over every tensor (checkpoint.digest, in the model's order) and the format,
                    config and latent scale: safetensors itself has no checksum, so this is what
                    catches a flipped byte
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvae.atomic import atomic_path
from jaxvae.checkpoint import digest
from jaxvae.config import Config
from jaxvae.model import build
from jaxvae.run import VERSION, RunError

EXPORT_FORMAT = 1
SUFFIX = ".safetensors"
CHECKED = ("jaxvae_format", "config", "latent_scale")  # the metadata the checksum covers


def _name(path) -> str:
    """A state path (DictKey('encoder'), DictKey('blocks'), DictKey(0), ..., GetAttrKey('value'))
    -> 'encoder.blocks.0...'."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey) and key.name != "value":
            parts.append(key.name)
    return ".".join(parts)


def flat_params(model) -> dict[str, np.ndarray]:
    """Every array of the model's state as {dotted name: numpy array}, in the model's order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model))
    return {_name(path): np.asarray(leaf) for path, leaf in leaves}


def save(vae, out: str | os.PathLike, *, latent_scale: float | None, latent_scale_examples: str = "",
         checkpoint: str = "latest") -> Path:
    """Write `vae` (a TrainedVAE) as a safetensors file at `out` atomically; returns the path."""
    from safetensors.numpy import save_file

    tensors = flat_params(vae.model)
    metadata = {
        "jaxvae_format": str(EXPORT_FORMAT),
        "jaxvae_version": VERSION,
        "config": vae.config.to_json(),
        "latent_scale": json.dumps(latent_scale),
        "latent_scale_examples": latent_scale_examples,
        "checkpoint": checkpoint,
    }
    metadata["sha256"] = _checksum(tensors.values(), metadata)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(out)


def _checksum(values, metadata: dict[str, str]) -> str:
    """sha256 over every tensor (dtype, shape, bytes, in the model's order) and the metadata that
    rebuilds the model: safetensors itself has no checksum, so this is what catches a flipped byte."""
    meaning = json.dumps({k: metadata.get(k) for k in CHECKED}, sort_keys=True)
    return hashlib.sha256((digest(list(values)) + meaning).encode()).hexdigest()


def read(path: str | os.PathLike) -> tuple[Config, dict[str, np.ndarray], dict[str, str]]:
    """(config, tensors, metadata) of a file jaxvae wrote; RunError in one line for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise RunError(f"no such model file: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{path} is not a readable safetensors file (corrupted or truncated?): {reason}") from None
    if "jaxvae_format" not in metadata:
        raise RunError(f"{path} is a safetensors file, but not one jaxvae export wrote (no jaxvae metadata)")
    try:
        fmt = int(metadata["jaxvae_format"])
    except ValueError:
        raise RunError(f"{path} has an unreadable jaxvae_format {metadata['jaxvae_format']!r}") from None
    if fmt > EXPORT_FORMAT:
        raise RunError(f"{path} was written by jaxvae {metadata.get('jaxvae_version', '?')} in export format {fmt}; "
                       f"this jaxvae {VERSION} reads format {EXPORT_FORMAT}: upgrade jaxvae")
    try:
        config = Config.from_dict(json.loads(metadata["config"]))
    except (KeyError, ValueError, TypeError) as e:  # ConfigError is a ValueError: unknown fields, bad values
        raise RunError(f"{path} holds no valid jaxvae config: {e}") from None
    return config, tensors, metadata


def load(path: str | os.PathLike):
    """The TrainedVAE of an exported file: the config's model with the file's parameters, checked
    name by name, shape by shape, and against the digest written with them."""
    from jaxvae.api import TrainedVAE

    config, tensors, metadata = read(path)
    graphdef, template = nnx.split(nnx.eval_shape(lambda: build(config)))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [_name(p) for p, _ in leaves]
    missing, extra = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
    if missing or extra:
        raise RunError(f"{path}: its tensors do not fit its config's model (missing {missing[:3]}, "
                       f"unexpected {extra[:3]})")
    values = []
    for name, (_, want) in zip(names, leaves, strict=True):
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise RunError(f"{path}: tensor {name} is {got.dtype}{list(got.shape)}, the config's model "
                           f"needs {want.dtype}{list(want.shape)}")
        values.append(got)
    if _checksum(values, metadata) != metadata.get("sha256"):
        raise RunError(f"{path} is corrupted: its tensors or config do not match the checksum written with them")
    params = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v) for v in values])
    try:
        scale = json.loads(metadata.get("latent_scale", "null"))
    except ValueError:
        raise RunError(f"{path} has an unreadable latent_scale {metadata.get('latent_scale')!r}") from None
    return TrainedVAE(config, nnx.merge(graphdef, params), source=Path(path), latent_scale=scale)


def check_is_export(path: str | os.PathLike) -> None:
    """A file given where a run or an exported model is expected must be a .safetensors file."""
    if Path(path).suffix != SUFFIX:
        raise RunError(f"{path} is a file, but neither a run directory nor an exported {SUFFIX} model")
