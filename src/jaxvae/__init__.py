"""jaxvae: variational auto-encoders in JAX / Flax NNX.

    import jaxvae
    vae = jaxvae.load("runs/demo")
    images = jaxvae.to_uint8(vae.sample(16, temperature=0.8))  # uint8 (16, S, S, C)
    held_out = vae.held_out(100, as_uint8=True)                # the run's own validation images
    result = jaxvae.evaluate(vae, uint8_images, iw_samples=1000)
"""

from jaxvae import evaluate  # a module you can call: jaxvae.evaluate(vae, data, iw_samples=K)
from jaxvae.api import TrainedVAE, load
from jaxvae.config import PRESETS, Config
from jaxvae.data import to_uint8  # model outputs in [-1, 1] -> uint8 images in [0, 255]
from jaxvae.distributions import Bernoulli, DiagonalGaussian, DiscretizedLogisticMixture

__all__ = ["PRESETS", "Bernoulli", "Config", "DiagonalGaussian", "DiscretizedLogisticMixture", "TrainedVAE", "evaluate",
           "load", "to_uint8"]
