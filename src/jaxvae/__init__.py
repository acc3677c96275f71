"""jaxvae: variational auto-encoders in JAX / Flax NNX.

    import jaxvae
    vae = jaxvae.load("runs/demo")
    images = jaxvae.to_uint8(vae.sample(16, temperature=0.8))  # uint8 (16, S, S, C)
    held_out = vae.held_out(100, as_uint8=True)                # the run's own validation images
    result = jaxvae.evaluate(vae, uint8_images, iw_samples=1000)
    print(jaxvae.format_table(result))

The names below load on first use (PEP 562), so that `import jaxvae.cli` (and `jaxvae --help`)
does not import JAX.
"""

import importlib

# public name -> the module that defines it
_EXPORTS = {
    "Config": "jaxvae.config", "PRESETS": "jaxvae.config",
    "TrainedVAE": "jaxvae.api", "load": "jaxvae.api",
    "evaluate": "jaxvae.evaluation", "format_table": "jaxvae.evaluation",
    "to_uint8": "jaxvae.data",  # model outputs in [-1, 1] -> uint8 images in [0, 255]
    "Bernoulli": "jaxvae.distributions", "DiagonalGaussian": "jaxvae.distributions",
    "DiscretizedLogisticMixture": "jaxvae.distributions",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxvae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once: later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
