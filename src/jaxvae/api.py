"""The Python API: `jaxvae.load(run_dir)` and what it returns.

    vae = jaxvae.load("runs/demo")
    q = vae.encode(x)            # DiagonalGaussian over z, x (B,S,S,C) in [-1,1] (or (B,D) vectors)
    p = vae.decode(q.mean)       # DiagonalGaussian over x
    vae.reconstruct(x); vae.sample(16, seed=0, temperature=0.8)
    vae.sample(16, sampler="gmm")  # from RUN/samplers/gmm.json (jaxvae fit-sampler)
    vae.interpolate(x0, x1, steps=10, method="slerp")
    x = vae.held_out(10)         # the run's own held-out images, float32 in [-1, 1]
    jaxvae.to_uint8(vae.reconstruct(x))   # model outputs -> uint8 images in [0, 255]

Images go in as uint8 [0, 255] (converted) or floats in [-1, 1]; float input with no negative value
is refused as ambiguous unless data_range="01" (converted by x * 2 - 1) or "pm1" says which it is
(data.as_model_images).

A vector run (config.vector_data) takes and gives (B, D) vectors in the model's units, as `evaluate`
takes them and `held_out` returns them: standardized with the training split's mean and std when the
run was trained with --standardize (data.load_dataset(vae.config).transform(raw) standardizes new raw
vectors; `jaxvae encode --data new.csv` does it for you), else the raw values.

Loading only reads the run: config.json and the parameters of one checkpoint, by default the best by
validation loss (`checkpoint="latest"` or a step number pick another), their EMA when the run was
trained with --ema; vae.checkpoint_step and vae.checkpoint_note say which. Or a file that
`jaxvae export` wrote (jaxvae.load("model.safetensors"), see export.py): the same model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxvae import data as data_lib
from jaxvae import run as run_lib
from jaxvae import sample as sample_lib
from jaxvae.checkpoint import Checkpointer, parse_checkpoint
from jaxvae.config import Config, ConfigError
from jaxvae.distributions import DiagonalGaussian
from jaxvae.model import VAE, build


class TrainedVAE:
    """A trained model and its config. Inputs: numpy or JAX arrays; outputs: numpy."""

    def __init__(self, config: Config, model: VAE, run_dir: Path | None = None, checkpoint_step: int | None = None,
                 checkpoint_note: str = "", *, source: Path | None = None, latent_scale: float | None = None):
        self.config, self.model, self.run_dir = config, model, run_dir
        self.checkpoint_step, self.checkpoint_note = checkpoint_step, checkpoint_note
        self.source = source or run_dir  # the run directory or the exported file it was loaded from
        self._latent_scale = latent_scale

    @property
    def latent_scale(self) -> float | None:
        """What to multiply latents by for unit variance: 1 / std of the posterior means, pooled over
        examples and dimensions (latent diffusion's scale_factor; see encode.py).

        An exported file carries it (measured at export). For a run it is measured on first use over
        at most encode.LATENT_SCALE_EXAMPLES examples of the training split (evenly strided), which
        reads the run's data, and then kept. None when the means do not vary at all.
        """
        if self._latent_scale is None and self.run_dir is not None:
            from jaxvae.encode import run_latent_scale

            self._latent_scale = run_latent_scale(self)[0]
        return self._latent_scale

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.image_size, c.image_size, c.channels)

    def _inputs(self, x, name: str = "x", data_range: str = "") -> np.ndarray:
        """What the model takes: (B, S, S, C) images in [-1, 1] (see _images), or (B, D) vectors (_vectors)."""
        return self._vectors(x, name, data_range) if self.config.vector_data else self._images(x, name, data_range)

    def _vectors(self, x, name: str = "x", data_range: str = "") -> np.ndarray:
        """(B, D) vectors (or one (D,) vector) in the model's units -> (B, D) float32, as given."""
        if data_range:
            raise ConfigError(f"data_range={data_range!r} is for images; vectors go in as the model takes them")
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1:] != self.config.data_shape or x.dtype.kind not in "fiu":
            raise ValueError(f"{name} must be numeric vectors of shape (B, {self.config.data_dim}); "
                             f"got shape {x.shape}, dtype {x.dtype}")
        return x.astype(np.float32)

    def _images(self, x, name: str = "x", data_range: str = "") -> np.ndarray:
        """NHWC images (or one HWC image) by data.as_model_images' rule: uint8 [0, 255] converted,
        floats in [-1, 1] (or [0, 1] with data_range="01"); anything else raises ConfigError."""
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != self.image_shape:
            raise ValueError(f"{name} must be NHWC images of shape (B, {', '.join(map(str, self.image_shape))}) "
                             f"in [-1, 1]; got shape {x.shape}")
        return data_lib.as_model_images(x, data_range, name)

    def held_out(self, n: int | None = None, *, as_uint8: bool = False) -> np.ndarray:
        """The first n held-out examples of the run's own data (its validation split), as the model takes
        them: images float32 (n, S, S, C) in [-1, 1] (uint8 [0, 255] with as_uint8), or vectors."""
        ds = data_lib.load_dataset(self.config)
        rows = np.asarray(ds.val[:n] if n is not None else ds.val)
        return rows if as_uint8 else ds.model_input(rows)

    def _latents(self, z) -> np.ndarray:
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[1] != self.config.z_dim:
            raise ValueError(f"z must have shape (B, {self.config.z_dim}); got {z.shape}")
        return z

    def encode(self, x, data_range: str = "") -> DiagonalGaussian:
        """q(z|x) for images x (uint8, or floats: see _images) or vectors x (B, D) in the model's units:
        mean and log_std of shape (B, Z), as numpy."""
        q = _encode(self.model, self._inputs(x, data_range=data_range))
        return jax.tree.map(np.asarray, q)

    def decode(self, z) -> DiagonalGaussian:
        """p(x|z) for latents z (B, Z): mean and log_std of shape (B, S, S, C) (vectors: (B, D)), as numpy."""
        p = _decode(self.model, self._latents(z))
        return jax.tree.map(np.asarray, p)

    def reconstruct(self, x, data_range: str = "") -> np.ndarray:
        """Decoder means at the posterior means: images float32 in [-1, 1] (jaxvae.to_uint8 makes images of
        them), or (B, D) vectors in the model's units."""
        return sample_lib.reconstruct(self.model, self._inputs(x, data_range=data_range))

    def sample(self, n: int, seed: int = 0, temperature: float = 1.0, sampler: str | None = None) -> np.ndarray:
        """n decoded draws of the prior, or with sampler="gmm" of the run's fitted sampler (jaxvae fit-sampler)."""
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        if sampler is None:
            return sample_lib.sample_prior(self.model, n, jax.random.key(seed), temperature)
        from jaxvae import samplers

        if self.run_dir is None:
            raise ValueError("a sampler is read from the run directory: load the model with jaxvae.load(run)")
        fitted = samplers.load_sampler(self.run_dir, sampler)
        fitted_at = fitted.info.get("checkpoint_step")
        if fitted_at is not None and self.checkpoint_step is not None and fitted_at != self.checkpoint_step:
            print(f"jaxvae: warning: the {sampler} sampler was fitted to checkpoint {fitted_at}, this model is "
                  f"checkpoint {self.checkpoint_step}", file=sys.stderr, flush=True)
        return sample_lib.decode_mean(self.model, fitted.sample(n, seed, temperature))

    def interpolate(self, x0, x1, steps: int = 10, method: str = "slerp", data_range: str = "") -> np.ndarray:
        a, b = self._inputs(x0, "x0", data_range), self._inputs(x1, "x1", data_range)
        if len(a) != 1 or len(b) != 1:
            raise ValueError("interpolate takes one example (image or vector) for x0 and one for x1")
        return sample_lib.interpolate(self.model, a[0], b[0], steps, method)


@nnx.jit
def _encode(model, x):
    return model.encode(x)


@nnx.jit
def _decode(model, z):
    return model.decode(z)


def load(run_dir: str | os.PathLike, checkpoint: str | int = "best") -> TrainedVAE:
    """Load a trained run without writing anything to it, or a model file written by `jaxvae export`.

    checkpoint: "best" (lowest validation loss; the latest when none has one), "latest", or a step number.
    """
    if Path(run_dir).is_file() or (Path(run_dir).suffix == ".safetensors" and not Path(run_dir).is_dir()):
        from jaxvae import export

        export.check_is_export(run_dir)
        if checkpoint not in ("best", "latest"):
            raise ConfigError(f"{run_dir} is an exported model: it holds one set of parameters, no checkpoints")
        return export.load(run_dir)
    path, config = run_lib.open_run(run_dir)
    which = parse_checkpoint(checkpoint)  # bad input is refused before anything is read
    abstract = nnx.eval_shape(lambda: build(config))
    graphdef, params_template = nnx.split(abstract)
    from jaxvae.resilience import restore_selected  # past a damaged checkpoint to a good one

    step, note, params = restore_selected(Checkpointer(path, read_only=True), params_template, which)
    return TrainedVAE(config, nnx.merge(graphdef, params), path, step, note)


def say_checkpoint(vae: TrainedVAE) -> None:
    """The one line on stderr by which a command says which checkpoint it uses."""
    if vae.checkpoint_step is not None:  # an exported file has no checkpoints
        print(f"jaxvae: checkpoint {vae.checkpoint_step} ({vae.checkpoint_note})", file=sys.stderr, flush=True)
