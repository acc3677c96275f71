"""jaxvae: variational auto-encoders in JAX / Flax NNX.

    import jaxvae
    vae = jaxvae.load("runs/demo")
    images = vae.sample(16, temperature=0.8)
    result = jaxvae.evaluate(vae, uint8_images, iw_samples=1000)
"""

from jaxvae import evaluate  # a module you can call: jaxvae.evaluate(vae, data, iw_samples=K)
from jaxvae.api import TrainedVAE, load
from jaxvae.config import PRESETS, Config
from jaxvae.distributions import Bernoulli, DiagonalGaussian, DiscretizedLogisticMixture

__all__ = ["PRESETS", "Bernoulli", "Config", "DiagonalGaussian", "DiscretizedLogisticMixture", "TrainedVAE", "evaluate",
           "load"]
