"""Reconstruction, prior sampling and interpolation: functions of (model, inputs, key).

The CLI, the Python API and the pictures written after training all call these. Images are
NHWC float in [-1, 1]; what comes back is numpy. Decoded images are the decoder's mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

CHUNK = 256  # images per device call, to bound memory on large inputs


@nnx.jit
def _posterior_mean(model, x):
    return model.encode(x).mean


@nnx.jit
def _decode_mean(model, z):
    return model.decode(z).mean


def batched(fn, model, x: np.ndarray):
    """fn(model, x) over x in chunks whose size is a power of two (at most CHUNK, the tail
    zero-padded), so that any number of inputs compiles fn for a handful of batch sizes only.
    fn must treat rows independently (the models do); its outputs (a pytree) come back as numpy."""
    size = min(CHUNK, 1 << max(0, len(x) - 1).bit_length())
    outs = []
    for i in range(0, len(x), size):
        chunk = np.asarray(x[i:i + size], np.float32)
        n = len(chunk)
        chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), np.float32)])
        outs.append(jax.tree.map(lambda a, n=n: np.asarray(a)[:n], fn(model, jnp.asarray(chunk))))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outs)


def encode_mean(model, x: np.ndarray) -> np.ndarray:
    """(B,S,S,C) -> (B,Z) posterior means."""
    return batched(_posterior_mean, model, x)


def decode_mean(model, z: np.ndarray) -> np.ndarray:
    """(B,Z) -> (B,S,S,C) decoder means."""
    return batched(_decode_mean, model, z)


def reconstruct(model, x: np.ndarray) -> np.ndarray:
    """Decode the posterior mean: (B,S,S,C) -> (B,S,S,C)."""
    return decode_mean(model, encode_mean(model, x))


def z_dim(model) -> int:
    return model.decoder.embed.in_features


@nnx.jit(static_argnums=(2,))
def _prior_draws(model, key, n, temperature):
    return model.prior.sample(key, n, temperature)


def prior_latents(model, n: int, key: jax.Array, temperature: float = 1.0) -> np.ndarray:
    """(n, Z) draws of the model's prior at a temperature. For N(0, I), z ~ N(0, T^2 I); for the
    VampPrior, a uniformly drawn component's mean plus T times its std times N(0, I) noise."""
    if getattr(model, "prior", None) is None:  # a bare encoder/decoder pair: N(0, I)
        return np.asarray(temperature * jax.random.normal(key, (n, z_dim(model))))
    return np.asarray(_prior_draws(model, key, n, temperature))


def sample_prior(model, n: int, key: jax.Array, temperature: float = 1.0) -> np.ndarray:
    """Decode n draws of the model's prior at a temperature (see prior_latents): (n,S,S,C)."""
    return decode_mean(model, prior_latents(model, n, key, temperature))


def lerp(z0: np.ndarray, z1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(Z,), (Z,), (T,) -> (T,Z) straight-line interpolation."""
    t = np.asarray(t, np.float64)[:, None]
    return ((1 - t) * z0 + t * z1).astype(np.float32)


def slerp(z0: np.ndarray, z1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(Z,), (Z,), (T,) -> (T,Z) spherical interpolation: follows the great circle between the two
    directions (with the norm interpolated linearly), so midpoints keep the norm typical of
    Gaussian latents instead of shrinking towards the origin as lerp does.

    The circle is written as cos(t w) u0 + sin(t w) v, with u0 = z0/|z0| and v the unit vector
    orthogonal to u0 in the plane of z0 and z1, rather than the textbook sum divided by sin w: every
    point has norm exactly 1 before the norm is scaled, even as w -> pi where sin w -> 0. For
    (nearly) opposite latents, |u1 - cos(w) u0| < 1e-6, every great circle through them is equally
    short and the plane is undefined; v is then the coordinate axis least aligned with z0, made
    orthogonal to it (a fixed choice: the same path every time).
    """
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    t = np.asarray(t, np.float64)[:, None]
    n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
    if n0 < 1e-12 or n1 < 1e-12:
        return lerp(z0, z1, t[:, 0])
    u0, u1 = z0 / n0, z1 / n1
    cos = np.clip(np.dot(u0, u1), -1.0, 1.0)
    omega = np.arccos(cos)
    if omega < 1e-6:
        return lerp(z0, z1, t[:, 0])
    v = u1 - cos * u0  # (Z,) the part of u1 orthogonal to u0, of norm sin(omega)
    if np.linalg.norm(v) < 1e-6:  # opposite: any orthogonal direction is a shortest path
        v = np.zeros_like(u0)
        v[np.argmin(np.abs(u0))] = 1.0
        v -= np.dot(v, u0) * u0
    v -= np.dot(v, u0) * u0  # once more, against rounding
    v /= np.linalg.norm(v)
    direction = np.cos(t * omega) * u0 + np.sin(t * omega) * v  # (T,Z), unit norm
    return (direction * ((1 - t) * n0 + t * n1)).astype(np.float32)


INTERPOLATIONS = {"slerp": slerp, "lerp": lerp}


def interpolate(model, x0: np.ndarray, x1: np.ndarray, steps: int = 10, method: str = "slerp") -> np.ndarray:
    """Decode `steps` points between the posterior means of two images: (steps,S,S,C)."""
    if method not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {method!r}: choose slerp or lerp")
    z = encode_mean(model, np.stack([x0, x1]))
    return decode_mean(model, INTERPOLATIONS[method](z[0], z[1], np.linspace(0, 1, steps)))


def interpolate_pixels(x0: np.ndarray, x1: np.ndarray, steps: int = 10) -> np.ndarray:
    """Pixel-space cross-fade between two images: (steps,S,S,C)."""
    t = np.linspace(0, 1, steps)[:, None, None, None]
    return ((1 - t) * x0[None] + t * x1[None]).astype(np.float32)


def pixel_mse(x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error in [0, 1] pixel space of two [-1, 1] image batches (outputs clipped)."""
    a = (np.asarray(x, np.float64) + 1) / 2
    b = np.clip((np.asarray(y, np.float64) + 1) / 2, 0, 1)
    return float(np.mean((a - b) ** 2))
