"""Measure what a VAE learned: the ELBO, an importance-weighted bound on log p(x), bits/dim,
reconstruction quality, and whether its latents collapsed.

    result = jaxvae.evaluate(vae, images, iw_samples=1000)   # a JSON-ready dict
    print(jaxvae.format_table(result))

Per example x, in nats (then the mean and its standard error over the examples):
  reconstruction_nll  -E_q[log p(x|z)], averaged over the K samples z_k ~ q(z|x)
  kl                  KL(q(z|x) || p(z)): closed form for N(0, I); for the VampPrior, which has none,
                      the Monte Carlo mean of log q(z_k|x) - log p(z_k) over the K samples
  negative_elbo       reconstruction_nll + kl
  iwae                log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) (Burda et al. 2016), a lower bound on
                      log p(x) that rises with K towards it: ELBO <= E[IWAE_K] <= E[IWAE_2K] <= log p(x)
  iwae_by_k           the same bound from the first 1, 10, 100, ... of the K samples (free: one pass)

How it is computed: per example, log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) in float32 and
a running logsumexp over chunks of the K samples (a lax.scan), so no more than `plan.samples` decodes
of `plan.examples` examples are ever live at once; `plan_chunks` picks both so that their estimated
activations fit under `memory_cap_mb`. Example i's noise is drawn from fold_in(key, i) and sample k's
from fold_in of that, so the result does not depend on the chunking (tests check it).

Over the whole set, the posterior-collapse diagnostics of latents.collapse: active units, the KL per
latent dim, and the mutual information I_q(x; z). log p(z) is the model's prior's (priors.py). With a
VampPrior the KL per dim is KL(q(z_j|x) || p(z_j)) against the prior's marginal in dim j, a 1-D
mixture, estimated from the same K samples; as the prior's dims are dependent these do not sum to
the KL, so marginal_kl is the total KL minus I_q.

Binarized models (--binarize) are evaluated on binarized data: static thresholds at 0.5 as in
training; dynamic uses the standard protocol, one fixed stochastic binarization of the evaluated
set drawn from the seed (example i's from fold_in(key, i), independent of the chunking).

With --disentanglement (`disentanglement_scores`), on data with known factors: the five scores of
disentanglement.py, of the posterior mean, drawn from the data's factor grid (or table).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvae import latents, likelihoods, losses, priors
from jaxvae.config import EVALUATE_MEMORY_CAP_MB, Config, ConfigError
from jaxvae.distributions import DiagonalGaussian

PROBE_ABOVE = 1_000_000  # decodes (N x K) above which `jaxvae evaluate` times a first call to estimate the job
MAX_SECONDS = 3600.0  # `jaxvae evaluate` refuses an estimated job longer than this without --yes
PROGRESS_EVERY_S = 30.0


class Progress:
    """A tqdm bar on stderr in a terminal; otherwise (a log file, CI) one line every PROGRESS_EVERY_S."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool = True):
        from tqdm import tqdm

        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.lines = enabled and not sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled or self.lines, file=sys.stderr)
        self.t0 = self.last = time.perf_counter()

    def update(self, k: int) -> None:
        self.done += k
        self.bar.update(k)
        now = time.perf_counter()
        if self.lines and now - self.last >= PROGRESS_EVERY_S and self.done < self.total:
            left = (now - self.t0) / self.done * (self.total - self.done)
            print(f"jaxvae {self.desc}: {self.done}/{self.total} {self.unit}s, {now - self.t0:.0f} s, "
                  f"about {left:.0f} s left", file=sys.stderr, flush=True)
            self.last = now

    def close(self) -> None:
        self.bar.close()
# On a CPU a device call also stays under this (estimated) working set, so that it fits in cache:
# measured on the 2-core CPU, tiny preset, K = 1000: 4.3 images/s at 32 decodes per call (25 MiB),
# 3.3 at 63, 1.9 at 250 and 0.9 at 1000. Accelerators want large calls and get the cap alone.
CPU_CALL_MB = 32
MAX_BATCH = 256  # examples per device call, whatever the cap allows
# The evaluation's key folded with these gives each use of randomness its own stream (example i's then folds
# in i, so that no result depends on the chunking).
SAMPLES_FOLD, DEQUANTIZE_FOLD, MI_FOLD, BINARIZE_FOLD = 0, 1, 2, 3
PSNR_CAP_DB = 100.0  # a perfect reconstruction has infinite PSNR; JSON holds no infinity


# --- planning -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """How the (examples x K samples) grid is cut: `examples` x `samples` decodes per device call."""

    examples: int
    samples: int
    chunks: int  # ceil(K / samples): chunks of samples per batch of examples


def bytes_per_sample(c: Config) -> int:
    """A generous estimate of the live float32 activations of one decode and its log-likelihood.

    transformer: one block's tokens x width x (q, k, v, out, MLP hidden) plus the attention scores;
    mlp: a few hidden layers; every arch: the output's mean, scale, residual and log-probabilities.
    Doubled, because XLA may keep two layers' buffers alive. Against XLA's own memory analysis of
    the compiled step (CPU, 1000 decodes): tiny preset 416 MiB of temporaries for 766 estimated; a
    2 x 256 MLP on 32x32x3 images 47 for 149. Parameters and the encoder pass come on top.
    """
    d_out = int(np.prod(c.data_shape))
    if c.arch == "transformer":
        t, h = c.num_patches, c.hidden
        acts = t * h * (4 + 2 * c.mlp_ratio) + 2 * c.heads * t * t
    elif c.arch == "conv":  # the widest level's activations, a few at a time (a block keeps ~4 live)
        from jaxvae.conv import fine_channels, widths

        acts = max(4 * (c.image_size // c.patch_size // 2**lvl) ** 2 * w for lvl, w in enumerate(widths(c)))
        acts += 2 * c.image_size**2 * fine_channels(c) if c.patch_size > 1 else 0  # the full-resolution stage
    elif c.arch == "mlp":
        acts = 4 * c.hidden
    else:
        acts = 0
    prior = 2 * c.pseudo_inputs * c.z_dim if c.prior == "vamp" else 0  # log q(z|u_k) for every component
    k = likelihoods.values_per_output(c)  # the decoder's values per data value (3K for a logistic mixture)
    return 2 * 4 * (acts + (4 + k) * d_out + 4 * c.z_dim + prior)


def plan_chunks(k: int, n: int, sample_bytes: int, cap_bytes: int) -> Plan:
    """Most decodes per call under the cap: many examples when K is small, one example in K-chunks else."""
    per_call = max(1, cap_bytes // sample_bytes)
    if k <= per_call:
        return Plan(examples=max(1, min(n, per_call // k, MAX_BATCH)), samples=k, chunks=1)
    chunks = -(-k // per_call)
    return Plan(examples=1, samples=-(-k // chunks), chunks=chunks)


# --- the jitted per-batch computation -----------------------------------------------------------

def iwae_ladder(k: int) -> tuple[int, ...]:
    """The sample counts at which IWAE is also reported: 1, 10, 100, ... below K, then K itself.
    The first K' of the K samples give IWAE_K', so one pass shows the bound rising with K."""
    return tuple(10**i for i in range(len(str(k))) if 10**i < k) + (k,)


def _ssim_filter(side: int) -> int:
    """dm-pix's default 11x11 window, shrunk (odd) for images smaller than that."""
    return min(11, side if side % 2 else side - 1)


@functools.partial(jax.jit, static_argnames=("graphdef", "k", "plan", "dequantize", "images", "binarize"))
def _evaluate_batch(graphdef, params, x, idx, key, *, k: int, plan: Plan, dequantize: bool, images: bool,
                    binarize: str = ""):
    """Every per-example quantity for one batch.

    Args:
      x: (B, *shape) float32 in the model's range (images [-1, 1], or vectors).
      idx: (B,) int32 example indices: example i's noise is a function of (key, i) alone.
      key: the evaluation's key.
    Returns a dict of (B,) arrays, and (B, Z) ones for kl_per_dim, posterior_mean, posterior_log_std.
    """
    model = nnx.merge(graphdef, params)
    clean = x

    def keys(fold: int) -> jax.Array:  # (B,) keys: example i's, of this use of randomness
        return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, fold), i))(idx)

    if dequantize:  # the density the model was trained on: pixel k -> k + u, u ~ U[0, 1)
        x = jax.vmap(losses.dequantize)(x, keys(DEQUANTIZE_FOLD))
    if binarize:  # static: thresholded; dynamic: a fixed stochastic binarization, example i's from (key, i)
        x = jax.vmap(lambda xi, ki: losses.binarize(xi, binarize, ki))(x, keys(BINARIZE_FOLD))
        clean = x
    prior = priors.of(model)
    p_z = prior.mixture()  # the VampPrior's components are encoded once per batch, not per chunk
    q: DiagonalGaussian = model.encode(x)  # (B, Z)
    b, z_dim = q.mean.shape
    q_k = DiagonalGaussian(q.mean[:, None], q.log_std[:, None])  # (B, 1, Z), broadcasts over samples
    example_keys = keys(SAMPLES_FOLD)  # (B,) keys
    data_axes = tuple(range(2, x.ndim + 1))  # the axes of one example in (B, Kc, *shape)

    ladder = iwae_ladder(k)  # K' = 1, 10, 100, ... < K, and K: sample k < K' feeds IWAE_K'

    def one_chunk(carry, j):
        lse, ll_sum, kl_sum, kl_dim_sum = carry  # (L, B) running logsumexp per rung, (B,) sums of log p(x|z_k)
        # and of log q(z_k|x) - log p(z_k), (B, Z) sum of log q(z_kj|x) - log p(z_kj) (the VampPrior's KLs)
        ks = j * plan.samples + jnp.arange(plan.samples)  # (Kc,) sample numbers
        draw = lambda ek: jax.vmap(lambda s: jax.random.normal(jax.random.fold_in(ek, s), (z_dim,)))(ks)
        z = q_k.mean + q_k.std * jax.vmap(draw)(example_keys)  # (B, Kc, Z)
        p = model.decode(z.reshape(b * plan.samples, z_dim))  # over (B*Kc, *shape)
        p = jax.tree.map(lambda a: a.reshape(b, plan.samples, *a.shape[1:]), p)
        ll = jnp.sum(p.log_prob(x[:, None]), axis=data_axes)  # (B, Kc) log p(x|z_k)
        log_q = q_k.log_prob(z)  # (B, Kc, Z)
        log_ratio = p_z.log_prob(z) - jnp.sum(log_q, axis=-1)  # (B, Kc) log p(z_k) - log q(z_k|x)
        log_w = ll + log_ratio
        valid = (ks < k)[None, :]  # (1, Kc): samples past K in the last chunk are padding
        rungs = jnp.asarray(ladder)[:, None, None]  # (L, 1, 1)
        masked = jnp.where(ks[None, None] < rungs, log_w[None], -jnp.inf)  # (L, B, Kc); the last rung is K
        lse = jnp.logaddexp(lse, jax.nn.logsumexp(masked, axis=2))
        kl_dim = log_q - p_z.marginal_log_prob(z)  # (B, Kc, Z)
        return (lse, ll_sum + jnp.sum(jnp.where(valid, ll, 0.0), axis=1),
                kl_sum - jnp.sum(jnp.where(valid, log_ratio, 0.0), axis=1),
                kl_dim_sum + jnp.sum(jnp.where(valid[..., None], kl_dim, 0.0), axis=1)), None

    init = (jnp.full((len(ladder), b), -jnp.inf, jnp.float32), jnp.zeros((b,), jnp.float32),
            jnp.zeros((b,), jnp.float32), jnp.zeros((b, z_dim), jnp.float32))
    (lse, ll_sum, kl_sum, kl_dim_sum), _ = jax.lax.scan(one_chunk, init, jnp.arange(plan.chunks))
    if prior.analytic_kl:
        kl_per_dim = q.kl_to_standard_normal()  # (B, Z)
        kl = jnp.sum(kl_per_dim, axis=-1)
    else:  # Monte Carlo over the K samples (see the module docstring)
        kl_per_dim, kl = kl_dim_sum / k, kl_sum / k
    out = {
        "iwae": lse[-1] - math.log(k),
        "iwae_ladder": (lse - jnp.log(jnp.asarray(ladder, jnp.float32))[:, None]).T,  # (B, L)
        "reconstruction_nll": -ll_sum / k,
        "kl": kl,
        "kl_per_dim": kl_per_dim,
        "posterior_mean": q.mean,
        "posterior_log_std": q.log_std,
    }
    recon = model.decode(q.mean).mean  # (B, *shape): the decoder's mean at the posterior mean
    if images:  # quality in [0, 1] pixel space, the reconstruction clipped into it
        a, r = (clean + 1.0) / 2.0, jnp.clip((recon + 1.0) / 2.0, 0.0, 1.0)
        out["mse"] = pix.mse(a, r)
        out["psnr"] = jnp.minimum(pix.psnr(a, r), PSNR_CAP_DB)
        out["ssim"] = pix.ssim(a, r, filter_size=_ssim_filter(a.shape[1]))
    else:
        out["mse"] = jnp.mean(jnp.square(recon - clean).reshape(b, -1), axis=-1)
    return out


# --- the public function ------------------------------------------------------------------------

def _stat(v: np.ndarray) -> dict:
    v = np.asarray(v, np.float64)
    se = float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
    return {"mean": float(np.mean(v)), "se": se}


def _unpack(vae, config: Config | None):
    """(model, config) from a TrainedVAE (jaxvae.load) or a bare VAE with its config."""
    if hasattr(vae, "model") and hasattr(vae, "config"):
        return vae.model, vae.config
    if config is None:
        raise ConfigError("evaluate needs the model's config: pass a jaxvae.load() result, or config=")
    return vae, config


def _check_data(data, c: Config) -> tuple[np.ndarray, bool]:
    """The data as an array of shape (N, *c.data_shape), and whether it is 8-bit images."""
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    expect = c.data_shape
    if data.ndim != 1 + len(expect) or tuple(data.shape[1:]) != expect:
        what = "vectors" if c.vector_data else "NHWC images"
        raise ConfigError(f"data has shape {tuple(data.shape)}, but this model takes {what} of shape "
                          f"(N, {', '.join(map(str, expect))})")
    if data.shape[0] < 1:
        raise ConfigError("data holds no examples")
    eight_bit = data.dtype == np.uint8
    if not eight_bit and data.dtype.kind != "f":
        raise ConfigError(f"data has dtype {data.dtype}: give uint8 images or float arrays in the model's range")
    return data, eight_bit


BINARIZATION_NOTES = {
    "": "none: the data is scored as given",
    "static": "static: every pixel thresholded at intensity 0.5, as in training",
    "dynamic": "dynamic: one fixed stochastic binarization, pixel ~ Bernoulli(intensity), drawn from --seed "
               "(the standard protocol for dynamically binarized MNIST)",
}


def _bits_per_dim_note(c: Config, binary: bool) -> tuple[bool, str]:
    if c.likelihood == "bernoulli":
        if binary:
            return True, "bernoulli likelihood on binary images: bits per binary pixel"
        return False, "bernoulli likelihood on non-binary pixels: a cross-entropy, not a likelihood bound"
    if c.likelihood == "logistic":
        return True, "discretized logistic likelihood: a discrete NLL of the 8-bit values, no dequantization needed"
    if c.dequantize:
        return True, "trained and evaluated with uniform dequantization: a bound on the 8-bit NLL"
    return False, ("model trained without --dequantize: a density at the pixel values, not a bound on "
                   "the 8-bit likelihood (it can look too good)")


def estimate_seconds(vae, data, iw_samples: int = 100, *, config: Config | None = None,
                     memory_cap_mb: float = EVALUATE_MEMORY_CAP_MB) -> tuple[float, float]:
    """(decodes, seconds): the work of evaluate(vae, data, iw_samples), N x K decodes, and its time at
    the rate of one timed device call on the first examples (after one that compiles it). Small jobs
    (at most PROBE_ABOVE decodes) are not timed: seconds is 0."""
    model, c = _unpack(vae, config)
    n = len(data)
    decodes = float(n) * iw_samples
    if decodes <= PROBE_ABOVE:
        return decodes, 0.0
    cap_bytes = int(memory_cap_mb * 2**20)
    call_bytes = min(cap_bytes, CPU_CALL_MB * 2**20) if jax.default_backend() == "cpu" else cap_bytes
    plan = plan_chunks(iw_samples, n, bytes_per_sample(c), call_bytes)
    probe = Plan(examples=plan.examples, samples=plan.samples, chunks=1)  # one chunk of one batch
    rows = np.asarray(data[:probe.examples])
    x, idx, _ = _padded_batch(rows, 0, probe.examples, eight_bit=rows.dtype == np.uint8)
    graphdef, params = nnx.split(model)
    times = []
    for _ in range(2):  # the first call compiles
        t0 = time.perf_counter()
        jax.block_until_ready(_evaluate_batch(graphdef, params, x, idx, jax.random.key(0), k=probe.samples,
                                              plan=probe, dequantize=False, images=not c.vector_data))
        times.append(time.perf_counter() - t0)
    rate = probe.examples * probe.samples / max(times[-1], 1e-6)
    return decodes, decodes / rate


def evaluate(vae, data, iw_samples: int = 100, *, config: Config | None = None, seed: int = 0,
             memory_cap_mb: float = EVALUATE_MEMORY_CAP_MB, per_example: bool = False,
             progress: bool = False, data_range: str = "") -> dict:
    """Everything `jaxvae evaluate` reports, as a JSON-ready dict.

    Args:
      vae: a TrainedVAE (jaxvae.load) or a bare jaxvae VAE together with `config`.
      data: (N, S, S, C) uint8 images (bits/dim is reported only for these), or float arrays in the
        model's range: (N, S, S, C) images in [-1, 1] or (N, D) vectors as the model was trained on.
        Float images with no negative value are refused as ambiguous ([0, 1] data read as [-1, 1]);
        data_range="01" converts [0, 1] images (x * 2 - 1), "pm1" vouches for [-1, 1] (data.as_model_images).
      iw_samples: K, importance samples per example (K = 1: IWAE is the one-sample ELBO).
      seed: fixes every draw; results do not depend on memory_cap_mb.
      memory_cap_mb: the estimated activations of one device call stay under this (and, on a CPU,
        under CPU_CALL_MB too, which is faster).
      per_example: also return the (N,) values behind the means under "per_example".
      progress: a progress bar on stderr in a terminal, else a line every PROGRESS_EVERY_S seconds.
    Returns: statistics {"mean", "se"} in nats per example for negative_elbo, reconstruction_nll,
      kl, iwae (the bound on log p(x)), iwae_minus_elbo; bits_per_dim(+_elbo) with their flags; mse
      (and psnr, ssim for images); active_units, latent_activity, kl_per_dim (sorted, with its
      latent indices), mutual_information; latent_std, the std of the posterior means pooled over
      examples and dims, and latent_scale = 1 / latent_std (encode.py); and how it was run (plan,
      seconds, examples_per_s).
    """
    model, c = _unpack(vae, config)
    data, eight_bit = _check_data(data, c)
    if not c.vector_data and not eight_bit:  # float images: one rule for their range, as for vae.encode
        from jaxvae.data import as_model_images

        data = as_model_images(data, data_range, "data")
    if not isinstance(iw_samples, int) or iw_samples < 1:
        raise ConfigError(f"iw_samples must be a positive integer, got {iw_samples!r}")
    if not (math.isfinite(memory_cap_mb) and memory_cap_mb > 0):  # NaN fails every comparison
        raise ConfigError(f"memory_cap_mb must be a finite number > 0, got {memory_cap_mb}")
    n, images = len(data), not c.vector_data
    cap_bytes = int(memory_cap_mb * 2**20)
    call_bytes = min(cap_bytes, CPU_CALL_MB * 2**20) if jax.default_backend() == "cpu" else cap_bytes
    plan = plan_chunks(iw_samples, n, bytes_per_sample(c), call_bytes)
    graphdef, params = nnx.split(model)
    key = jax.random.key(seed)
    dequantize = bool(c.dequantize and eight_bit)

    t0 = time.perf_counter()
    per, binary = _evaluate_all(graphdef, params, data, plan, key, k=iw_samples, dequantize=dequantize,
                                images=images, binarize=c.binarize, eight_bit=eight_bit, progress=progress)
    seconds = time.perf_counter() - t0
    elbo = per["kl"] + per["reconstruction_nll"]
    result = {
        "examples": n,
        "dims": int(np.prod(c.data_shape)),
        "data_kind": "images" if images else "vectors",
        "iw_samples": iw_samples,
        "seed": seed,
        "model": {"arch": c.arch, "likelihood": c.likelihood, "z_dim": c.z_dim, "beta": c.beta,
                  "dequantize": c.dequantize, "standardize": c.standardize, "objective": c.objective,
                  "prior": c.prior, "binarize": c.binarize},
        "binarization": BINARIZATION_NOTES[c.binarize],
        "negative_elbo": _stat(elbo),
        "reconstruction_nll": _stat(per["reconstruction_nll"]),
        "kl": _stat(per["kl"]),
        "iwae": _stat(per["iwae"]),
        "iwae_minus_elbo": _stat(per["iwae"] + elbo),
        "iwae_by_k": {str(kk): _stat(per["iwae_ladder"][:, i]) for i, kk in enumerate(iwae_ladder(iw_samples))},
        "mse": _stat(per["mse"]),
        **latents.collapse(per["posterior_mean"], per["posterior_log_std"], per["kl_per_dim"],
                            jax.random.fold_in(key, MI_FOLD), cap_bytes, seed,
                            kl_total=None if priors.of(model).analytic_kl else per["kl"]),
        "plan": dataclasses.asdict(plan),
        "memory_cap_mb": memory_cap_mb,
        "seconds": seconds,
        "examples_per_s": n / seconds,
        **_bits_per_dim(per, elbo, c, eight_bit, binary),
    }
    if images:
        result["psnr"], result["ssim"] = _stat(per["psnr"]), _stat(per["ssim"])
    # latent diffusion's scale factor, over these examples: multiply latents by it for unit variance
    from jaxvae.encode import latent_std, scale_from_std

    result["latent_std"] = latent_std(per["posterior_mean"])
    result["latent_scale"] = scale_from_std(result["latent_std"])
    if per_example:
        result["per_example"] = _per_example(per, elbo, iw_samples)
    return result


def _padded_batch(rows: np.ndarray, lo: int, size: int, eight_bit: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Examples lo.. of the data (rows) as the model's input (size, ...) float32, their indices (size,), and
    how many rows at the end repeat the last example: the last batch is padded, so one compilation serves all."""
    x = rows.astype(np.float32) / 127.5 - 1.0 if eight_bit else rows.astype(np.float32)  # == data.to_model_range
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"data holds NaN or infinite values (in examples {lo}..{lo + len(x) - 1})")
    idx = np.arange(lo, lo + len(x), dtype=np.int32)
    pad = size - len(x)
    if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        idx = np.concatenate([idx, np.repeat(idx[-1:], pad)])
    return x, idx, pad


def _evaluate_all(graphdef, params, data, plan: Plan, key, *, k: int, dequantize: bool, images: bool,
                  binarize: str, eight_bit: bool, progress: bool) -> tuple[dict[str, np.ndarray], bool]:
    """_evaluate_batch over all N examples, plan.examples at a time: the per-example values, (N,) or (N, Z)
    arrays by name, and whether the data is binary (bits/dim of a binarized model holds only for such data)."""
    parts: dict[str, list[np.ndarray]] = {}
    binary = True
    bar = Progress(len(data), "evaluate", "example", enabled=progress)
    for lo in range(0, len(data), plan.examples):
        rows = np.asarray(data[lo:lo + plan.examples])
        if eight_bit:  # binarized models score binarized data
            binary = binary and (bool(binarize) or bool(np.all((rows == 0) | (rows == 255))))
        x, idx, pad = _padded_batch(rows, lo, plan.examples, eight_bit)
        out = _evaluate_batch(graphdef, params, x, idx, key, k=k, plan=plan, dequantize=dequantize, images=images,
                              binarize=binarize)
        for name, value in jax.device_get(out).items():
            parts.setdefault(name, []).append(np.asarray(value)[: plan.examples - pad])
        bar.update(plan.examples - pad)
    bar.close()
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}, binary


def _bits_per_dim(per: dict, elbo: np.ndarray, c: Config, eight_bit: bool, binary: bool) -> dict:
    """bits/dim of the IWAE bound and of the ELBO, for uint8 images only, with whether they bound the discrete NLL."""
    if not eight_bit:
        return {"bits_per_dim": None, "bits_per_dim_elbo": None, "bits_per_dim_valid_bound": False,
                "bits_per_dim_note": "only for uint8 images"}
    d = int(np.prod(c.data_shape))
    # A gaussian is a density on [-1, 1]: change variables back to 0..255 pixel units (density / 127.5
    # per dim). bernoulli and logistic are already probabilities of the discrete values.
    offset = d * math.log(127.5) if c.likelihood == "gaussian" else 0.0
    to_bits = lambda nll: (nll + offset) / (d * math.log(2.0))
    valid, note = _bits_per_dim_note(c, binary)
    return {"bits_per_dim": _stat(to_bits(-per["iwae"])), "bits_per_dim_elbo": _stat(to_bits(elbo)),
            "bits_per_dim_valid_bound": valid, "bits_per_dim_note": note}


def _per_example(per: dict, elbo: np.ndarray, iw_samples: int) -> dict:
    """The (N,) values behind the means, as lists (JSON)."""
    keep = ("iwae", "reconstruction_nll", "kl", "mse", "psnr", "ssim")
    out = {k: per[k].astype(float).tolist() for k in keep if k in per}
    out["negative_elbo"] = elbo.astype(float).tolist()
    out["iwae_by_k"] = {str(kk): per["iwae_ladder"][:, i].astype(float).tolist()
                        for i, kk in enumerate(iwae_ladder(iw_samples))}
    return out


# --- presentation -------------------------------------------------------------------------------

def format_table(r: dict, title: str = "") -> str:
    """A readable table of an evaluate() result."""
    def row(label, stat, fmt=".3f"):
        if stat is None:
            return None
        se = f"± {stat['se']:{fmt}}" if stat["se"] is not None else ""
        return f"  {label:<30}{stat['mean']:>14{fmt}}  {se}"

    lines = [title] if title else []
    lines.append(f"{r['examples']} {r['data_kind']} of {r['dims']} dims, K = {r['iw_samples']} importance "
                 f"samples ({r['seconds']:.1f} s, {r['examples_per_s']:.1f} examples/s)")
    if r.get("checkpoint"):
        lines.append(f"  checkpoint: {r['checkpoint']}")
    if r["model"].get("binarize"):
        lines.append(f"  binarization: {r['binarization']}")
    lines.append(f"  {'':<30}{'mean':>14}  s.e.")
    lines += [row("-ELBO (nats)", r["negative_elbo"]), row("  reconstruction NLL (nats)", r["reconstruction_nll"]),
              row("  KL (nats)", r["kl"]), row(f"IWAE_{r['iw_samples']} log p(x) bound (nats)", r["iwae"]),
              row("IWAE - ELBO (nats)", r["iwae_minus_elbo"])]
    if r["bits_per_dim"] is not None:
        flag = "" if r["bits_per_dim_valid_bound"] else "  (not a valid bound, see note)"
        lines += [row("bits/dim (IWAE)", r["bits_per_dim"], ".4f") + flag,
                  row("bits/dim (ELBO)", r["bits_per_dim_elbo"], ".4f"), f"    note: {r['bits_per_dim_note']}"]
    mse_label = ("MSE in [0, 1] pixels" if r["data_kind"] == "images" else
                 "MSE (standardized units)" if r["model"]["standardize"] else "MSE (data units)")
    lines += [row(mse_label, r["mse"], ".5f"), row("PSNR (dB)", r.get("psnr"), ".2f"),
              row("SSIM", r.get("ssim"), ".4f")]
    z = len(r["latent_activity"])
    lines.append(f"  {'active units':<30}{r['active_units']:>14d}  of {z} "
                 f"(Cov_x E_q[z_j] > {r['active_unit_threshold']})")
    lines.append(f"  {'mutual information I_q(x;z)':<30}{r['mutual_information']:>14.3f}  nats (at most "
                 f"log {r['mutual_information_examples']} = {r['mutual_information_max']:.2f})")
    lines.append(f"  {'KL(q(z)||p(z)), marginal':<30}{r['marginal_kl']:>14.3f}  nats")
    if "latent_std" in r:
        scale = "undefined" if r["latent_scale"] is None else f"{r['latent_scale']:.4f}"
        lines.append(f"  {'latent std (posterior means)':<30}{r['latent_std']:>14.4f}  latent_scale = 1/std = {scale}")
    shown = 16  # the whole list is in the JSON and the chart
    top = ", ".join(f"z{j} {v:.2f}" for j, v in zip(r["kl_per_dim_index"][:shown], r["kl_per_dim"][:shown],
                                                    strict=True))
    more = f", ... ({z - shown} more)" if z > shown else ""
    lines.append(f"  KL per latent dim, sorted (nats): {top}{more}")
    if "mig" in r:
        d = r["disentanglement"]
        settings = d["settings"]
        lines.append(f"  disentanglement of {', '.join(d['factor_names'])} ({settings['num_train']} + "
                     f"{settings['num_test']} samples, groups of {settings['batch_size']}, {d['seconds']:.1f} s)")
        chance = 1.0 / len(d["factor_names"])
        labels = {"betavae_score": f"beta-VAE score (chance {chance:.2f})",
                  "factorvae_score": f"FactorVAE score (chance {chance:.2f})", "mig": "MIG", "sap": "SAP",
                  "dci_disentanglement": "DCI disentanglement", "dci_completeness": "DCI completeness",
                  "dci_informativeness": "DCI informativeness (accuracy)"}
        lines += [f"    {labels[k]:<28}{r[k]:>14.4f}" for k in labels]
    return "\n".join(line for line in lines if line is not None)


def disentanglement_ground_truth(c: Config, data: str = ""):
    """The FactorData that --disentanglement draws from: the run's data (or `data`), rendered at the
    model's image size (c is the run's config); ConfigError when that data has no known factors."""
    from jaxvae import data as data_lib

    spec = data or c.data
    truth = None if c.vector_data else data_lib.ground_truth(spec, c)
    if truth is None:
        raise ConfigError(f"--disentanglement needs data with known factors (dsprites, shapes, or an .npz with a "
                          f"`factors` array), and {spec} has none")
    return truth


def disentanglement_scores(vae, truth, *, seed: int = 0, num_train: int = 10000, num_test: int = 5000,
                           batch_size: int = 64) -> dict:
    """disentanglement.score_all of the posterior mean of a TrainedVAE, on a FactorData of uint8 images."""
    from jaxvae import disentanglement
    from jaxvae.data import to_model_range
    from jaxvae.sample import CHUNK

    model, _ = _unpack(vae, None)

    def encode(x: np.ndarray) -> np.ndarray:  # (n, S, S, C) uint8 -> (n, Z) posterior means
        # Padded to whole CHUNKs, so that every call runs the one compiled batch size.
        n = len(x)
        x = np.concatenate([x, np.zeros((-n % CHUNK, *x.shape[1:]), x.dtype)])
        return latents.posterior(model, to_model_range(x))[0][:n]

    result = disentanglement.score_all(encode, truth, seed=seed, num_train=num_train, num_test=num_test,
                                       batch_size=batch_size)
    result["disentanglement"]["settings"]["representation"] = "posterior mean"
    return result
