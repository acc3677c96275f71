"""jaxvae: variational auto-encoders in JAX / Flax NNX.

    import jaxvae
    vae = jaxvae.load("runs/demo")
    images = vae.sample(16, temperature=0.8)
"""

from jaxvae.api import TrainedVAE, load
from jaxvae.config import PRESETS, Config
from jaxvae.distributions import DiagonalGaussian

__all__ = ["PRESETS", "Config", "DiagonalGaussian", "TrainedVAE", "load"]
