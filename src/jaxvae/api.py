"""The Python API: `jaxvae.load(run_dir)` and what it returns.

    vae = jaxvae.load("runs/demo")
    q = vae.encode(x)            # DiagonalGaussian over z, x (B,S,S,C) in [-1,1]
    p = vae.decode(q.mean)       # DiagonalGaussian over x
    vae.reconstruct(x); vae.sample(16, seed=0, temperature=0.8)
    vae.interpolate(x0, x1, steps=10, method="slerp")

Loading only reads the run (config.json and the parameters of the latest checkpoint: their EMA when
the run was trained with --ema).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxvae import run as run_lib
from jaxvae import sample as sample_lib
from jaxvae.checkpoint import Checkpointer
from jaxvae.config import Config
from jaxvae.distributions import DiagonalGaussian
from jaxvae.model import VAE, build


class TrainedVAE:
    """A trained model and its config. Inputs: numpy or JAX arrays; outputs: numpy."""

    def __init__(self, config: Config, model: VAE, run_dir: Path | None = None):
        self.config, self.model, self.run_dir = config, model, run_dir

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.image_size, c.image_size, c.channels)

    def _images(self, x, name: str = "x") -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != self.image_shape:
            raise ValueError(f"{name} must be NHWC images of shape (B, {', '.join(map(str, self.image_shape))}) "
                             f"in [-1, 1]; got shape {x.shape}")
        return x

    def _latents(self, z) -> np.ndarray:
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[1] != self.config.z_dim:
            raise ValueError(f"z must have shape (B, {self.config.z_dim}); got {z.shape}")
        return z

    def encode(self, x) -> DiagonalGaussian:
        """q(z|x) for images x: mean and log_std of shape (B, Z), as numpy."""
        q = _encode(self.model, self._images(x))
        return jax.tree.map(np.asarray, q)

    def decode(self, z) -> DiagonalGaussian:
        """p(x|z) for latents z (B, Z): mean and log_std of shape (B, S, S, C), as numpy."""
        p = _decode(self.model, self._latents(z))
        return jax.tree.map(np.asarray, p)

    def reconstruct(self, x) -> np.ndarray:
        return sample_lib.reconstruct(self.model, self._images(x))

    def sample(self, n: int, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        return sample_lib.sample_prior(self.model, n, jax.random.key(seed), temperature)

    def interpolate(self, x0, x1, steps: int = 10, method: str = "slerp") -> np.ndarray:
        a, b = self._images(x0, "x0"), self._images(x1, "x1")
        if len(a) != 1 or len(b) != 1:
            raise ValueError("interpolate takes one image for x0 and one for x1")
        return sample_lib.interpolate(self.model, a[0], b[0], steps, method)


@nnx.jit
def _encode(model, x):
    return model.encode(x)


@nnx.jit
def _decode(model, z):
    return model.decode(z)


def load(run_dir: str | os.PathLike) -> TrainedVAE:
    """Load a trained run (its latest checkpoint) without writing anything to it."""
    path, config = run_lib.open_run(run_dir)
    abstract = nnx.eval_shape(lambda: build(config))
    graphdef, params_template = nnx.split(abstract)
    params = Checkpointer(path, read_only=True).restore_params(params_template)
    return TrainedVAE(config, nnx.merge(graphdef, params), path)
