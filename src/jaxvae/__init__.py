"""jaxvae: variational auto-encoders in JAX / Flax NNX."""
