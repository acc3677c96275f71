"""jaxvae: variational auto-encoders in JAX / Flax NNX.

    import jaxvae
    vae = jaxvae.load("runs/demo")
    images = vae.sample(16, temperature=0.8)
    result = jaxvae.evaluate(vae, uint8_images, iw_samples=1000)
"""

from jaxvae.api import TrainedVAE, load
from jaxvae.config import PRESETS, Config
from jaxvae.distributions import Bernoulli, DiagonalGaussian
from jaxvae.evaluate import evaluate  # the function: `jaxvae.evaluate` is no longer the module

__all__ = ["PRESETS", "Bernoulli", "Config", "DiagonalGaussian", "TrainedVAE", "evaluate", "load"]
