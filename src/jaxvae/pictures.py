"""A run's pictures, assembled in one place: `pictures(model, held_out, key, wanted) -> dict of arrays`.

Training (reconstructions.png, samples.png, interpolation.png: `RUN`), the picture commands (`jaxvae
sample`, `reconstruct`, `interpolate`, `traverse`: a `Wanted` of their flags) and the report all call
it and only lay the arrays out. Every latent it decodes goes through the decoder in one batched pass,
after one pass of the encoder over the held-out images it needs.

The key. Prior samples are the only random picture. A run's pictures draw them from
`run_key(config)` = jax.random.key(config.seed), the key `jaxvae sample RUN --seed SEED` and
vae.sample(n, seed=SEED) draw from: `jaxvae sample RUN --n 20 --seed SEED` decodes the latents of
samples.png, and the report shows the first images of the same 20 draws (scaled by each
temperature). No offset on the seed, hidden or named: the run's seed is the pictures' seed.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from jaxvae import data as data_lib
from jaxvae import latents, priors
from jaxvae import sample as sample_lib
from jaxvae.config import TRAVERSAL_SPAN, TRAVERSAL_STEPS, ConfigError


@dataclasses.dataclass(frozen=True)
class Wanted:
    """Which pictures, of how many images; a count of 0 (or no interpolations) leaves one out."""

    reconstructions: int = 0  # the first N held-out images over their reconstructions
    samples: int = 0  # N draws of the prior, decoded at each temperature (the same draw)
    temperatures: tuple[float, ...] = (1.0,)
    interpolations: tuple[str, ...] = ()  # of "pixel", "lerp", "slerp": between held-out images `pair`
    pair: tuple[int, int] = (0, 1)
    steps: int = 10  # images per interpolation
    traversals: int = 0  # traverse the N most active dims (largest mean KL over latents.HELD_OUT images)...
    dims: tuple[int, ...] = ()  # ...or these
    traversal_steps: int = TRAVERSAL_STEPS
    span: float = TRAVERSAL_SPAN  # sweep [-span, span] prior sigmas
    image: int = 0  # the held-out image whose posterior mean a traversal keeps in the other dims

    @property
    def traverses(self) -> bool:
        return bool(self.traversals or self.dims)


# What training writes into the run: 10 reconstructions, 20 samples at T = 1, pixel and slerp rows.
RUN = Wanted(reconstructions=10, samples=20, interpolations=("pixel", "slerp"))


def run_key(config) -> jax.Array:
    """The key of a run's prior samples (see the module docstring)."""
    return jax.random.key(config.seed)


def pictures(model, held_out: np.ndarray | None, key: jax.Array, wanted: Wanted) -> dict[str, np.ndarray]:
    """Decode the pictures `wanted` asks for.

    Args:
      model: a VAE.
      held_out: (N,S,S,C) held-out images, uint8 (converted) or float in [-1, 1]; only the rows a picture
        uses are read. None when only samples are wanted.
      key: the prior samples' key (run_key for a run's).
      wanted: which pictures.
    Returns numpy arrays, images (...,S,S,C) in [-1, 1], by what was wanted:
      originals, reconstructions (R,S,S,C) and reconstruction_mse () in [0,1] pixels;
      samples (len(temperatures), n, S,S,C);
      pixel, lerp, slerp (steps,S,S,C), from held-out image pair[0] to pair[1];
      traversals (D,T,S,S,C) with traversal_dims (D,) and traversal_values (T,), and the
      latents.LatentStats of the first latents.HELD_OUT held-out images as kl_per_dim, mean_variance (Z,).
    """
    x, mean, log_std, row = _encode(model, held_out, wanted)
    out, z = {}, {}
    if wanted.reconstructions:
        out["originals"] = x[:min(wanted.reconstructions, len(held_out))]
        z["reconstructions"] = mean[:len(out["originals"])]
    if wanted.samples:
        z["samples"] = np.concatenate([sample_lib.prior_latents(model, wanted.samples, key, t)
                                       for t in wanted.temperatures])  # (len(T) * n, Z)
    a, b = wanted.pair
    for method in wanted.interpolations:
        if method == "pixel":
            out["pixel"] = sample_lib.interpolate_pixels(x[row[a]], x[row[b]], wanted.steps)
        else:
            z[method] = sample_lib.INTERPOLATIONS[method](mean[row[a]], mean[row[b]], np.linspace(0, 1, wanted.steps))
    if wanted.traverses:
        z["traversals"], sweep = _traversals(model, mean, log_std, row, wanted, len(held_out))
        out.update(sweep)
    out.update(_decode_together(model, z))
    if "samples" in out:
        out["samples"] = out["samples"].reshape(len(wanted.temperatures), wanted.samples, *out["samples"].shape[1:])
    if "traversals" in out:
        out["traversals"] = out["traversals"].reshape(len(out["traversal_dims"]), wanted.traversal_steps,
                                                      *out["traversals"].shape[1:])
    if "reconstructions" in out:
        out["reconstruction_mse"] = np.float64(sample_lib.pixel_mse(out["originals"], out["reconstructions"]))
    return out


def _encode(model, held_out, wanted: Wanted):
    """The held-out rows the pictures use, in [-1, 1], their posteriors and where each row sits.

    Returns x (R,S,S,C), mean and log_std (R,Z), and {held-out index: row of x}; rows 0..k-1 are
    held-out images 0..k-1, so x[:k] are the first k."""
    n = 0 if held_out is None else len(held_out)
    first = max(wanted.reconstructions, min(latents.HELD_OUT, n) if wanted.traverses else 0)
    extra = sorted({*(wanted.pair if wanted.interpolations else ()), *((wanted.image,) if wanted.traverses else ())})
    index = list(range(min(first, n))) + [i for i in extra if i >= first]
    if not index:
        return None, None, None, {}
    x = np.asarray(held_out[np.asarray(index)])
    x = data_lib.to_model_range(x) if x.dtype == np.uint8 else x.astype(np.float32)
    mean, log_std = latents.posterior(model, x)
    return x, mean, log_std, {i: r for r, i in enumerate(index)}


def _traversals(model, mean, log_std, row, wanted: Wanted, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The (D*T, Z) latents to decode, and the dims, values and statistics (of the first latents.HELD_OUT
    of the n held-out images) that go with them."""
    first = min(latents.HELD_OUT, n)  # _encode put held-out images 0..first-1 in rows 0..first-1
    stats = latents.LatentStats.of(mean[:first], log_std[:first], model)
    z_dim = mean.shape[1]
    dims = np.asarray(wanted.dims or latents.most_active(stats.kl, min(wanted.traversals, z_dim)), np.int64)
    values = np.linspace(-wanted.span, wanted.span, wanted.traversal_steps)
    z = traversal_latents(mean[row[wanted.image]], dims, values, *prior_moments(model))  # (D, T, Z)
    return z.reshape(-1, z_dim), {"traversal_dims": dims, "traversal_values": values, "kl_per_dim": stats.kl,
                                  "mean_variance": stats.mean_variance}


def _decode_together(model, z: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{name: (B_i, Z)} -> {name: (B_i, S,S,C)} decoder means, in one batched pass."""
    if not z:
        return {}
    decoded = sample_lib.decode_mean(model, np.concatenate([np.asarray(v, np.float32) for v in z.values()]))
    ends = np.cumsum([len(v) for v in z.values()])
    return dict(zip(z, np.split(decoded, ends[:-1]), strict=True))


def prior_moments(model) -> tuple[np.ndarray, np.ndarray]:
    """(Z,), (Z,): the prior's mean and std per dimension (0 and 1 for N(0, I))."""
    mean, std = nnx.jit(lambda m: m.marginal_moments())(priors.of(model))
    return np.asarray(mean, np.float64), np.asarray(std, np.float64)


def traversal_latents(z0: np.ndarray, dims, values: np.ndarray, center: np.ndarray | None = None,
                      scale: np.ndarray | None = None) -> np.ndarray:
    """(Z,), D dims, (T,) values -> (D,T,Z): row i is z0 with coordinate dims[i] set to each value,
    in prior sigmas around the prior's mean: center[d] + values * scale[d] ((Z,) each; default 0 and 1)."""
    z0 = np.asarray(z0, np.float32)
    dims = np.asarray(dims, np.int64)
    center = np.zeros(len(z0)) if center is None else np.asarray(center)
    scale = np.ones(len(z0)) if scale is None else np.asarray(scale)
    z = np.broadcast_to(z0, (len(dims), len(values), len(z0))).copy()
    coords = center[dims][:, None] + np.asarray(values)[None, :] * scale[dims][:, None]  # (D, T)
    z[np.arange(len(dims)), :, dims] = coords.astype(np.float32)
    return z


def check_dims(dims, z_dim: int) -> list[int]:
    bad = [d for d in dims if not 0 <= d < z_dim]
    if bad:
        raise ConfigError(f"--dims {bad} out of range: the model has z_dim {z_dim} (dims 0..{z_dim - 1})")
    if len(set(dims)) != len(dims):
        raise ConfigError(f"--dims {list(dims)} repeats a dimension")
    return list(dims)
