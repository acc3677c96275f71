"""Samplers fitted after training: a better z to decode than a draw of the prior.

A VAE's aggregate posterior q(z) = E_x q(z|x) rarely fills N(0, I): prior draws land in its holes and
decode to blurs. A Gaussian mixture fitted to where the training data's codes lie (Ghosh et al. 2020;
Pythae's GaussianMixtureSampler) draws from where the decoder was trained.

    jaxvae fit-sampler RUN --kind gmm --components 10    # writes RUN/samplers/gmm.json
    jaxvae sample RUN --sampler gmm                      # or vae.sample(n, sampler="gmm")

The mixture is fitted (scikit-learn's GaussianMixture, full covariances by default) to the posterior
means E_q[z|x] of the training split: the codes the decoder reconstructs from, without the posterior
noise that would blur the fit. `heldout_loglik_sampler` and `heldout_loglik_prior` are the mean
log-density, in nats per example, of the held-out split's posterior means under the mixture and
under the model's prior: how much better the sampler covers where real codes lie. The JSON is the
only thing written, atomically, and `fit-sampler` refuses before writing when anything is wrong.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxvae import priors
from jaxvae import run as run_lib
from jaxvae.config import ConfigError
from jaxvae.run import RunError

KINDS = ("gmm",)
SAMPLERS = run_lib.SAMPLERS  # RUN/samplers/<kind>.json


def sampler_path(run_dir: str | Path, kind: str) -> Path:
    return Path(run_dir) / SAMPLERS / f"{kind}.json"


@dataclasses.dataclass(frozen=True)
class GMMSampler:
    """sum_k weights_k N(means_k, covariances_k) over Z latents: weights (K,), means (K,Z), covariances (K,Z,Z)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)  # how it was fitted, and the held-out figures

    @property
    def heldout_loglik_sampler(self) -> float:
        return float(self.info["heldout_loglik_sampler"])

    @property
    def heldout_loglik_prior(self) -> float:
        return float(self.info["heldout_loglik_prior"])

    def summary(self) -> str:
        return (f"{len(self.weights)}-component Gaussian mixture fitted to {self.info.get('train_examples', '?')} "
                f"posterior means (checkpoint {self.info.get('checkpoint_step', '?')})")

    def log_prob(self, z: np.ndarray) -> np.ndarray:
        """(N, Z) -> (N,) log density, float64."""
        z = np.asarray(z, np.float64)
        chol = np.linalg.cholesky(self.covariances)  # (K, Z, Z)
        diff = z[:, None, :] - self.means[None]  # (N, K, Z)
        sol = np.linalg.solve(chol[None], diff[..., None])[..., 0]  # L^-1 (z - mu), (N, K, Z)
        log_det = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)  # (K,)
        comp = -0.5 * (np.sum(sol**2, axis=-1) + log_det + z.shape[1] * np.log(2 * np.pi))  # (N, K)
        a = comp + np.log(self.weights)[None]
        top = a.max(axis=1, keepdims=True)
        return (top + np.log(np.sum(np.exp(a - top), axis=1, keepdims=True)))[:, 0]

    def sample(self, n: int, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
        """(n, Z) float32 draws: a component by its weight, then its mean + T * chol(cov) eps."""
        rng = np.random.default_rng(seed)
        k = rng.choice(len(self.weights), size=n, p=self.weights / self.weights.sum())
        eps = rng.standard_normal((n, self.means.shape[1]))
        chol = np.linalg.cholesky(self.covariances)
        return (self.means[k] + temperature * np.einsum("nij,nj->ni", chol[k], eps)).astype(np.float32)

    def to_json(self) -> dict:
        return {"kind": "gmm", "weights": self.weights.tolist(), "means": self.means.tolist(),
                "covariances": self.covariances.tolist(), **self.info}

    @classmethod
    def from_json(cls, d: dict) -> GMMSampler:
        info = {k: v for k, v in d.items() if k not in ("kind", "weights", "means", "covariances")}
        return cls(np.asarray(d["weights"], np.float64), np.asarray(d["means"], np.float64),
                   np.asarray(d["covariances"], np.float64), info)


def fit_gmm(latents: np.ndarray, components: int, seed: int = 0, covariance: str = "full") -> GMMSampler:
    """A Gaussian mixture of `components` fitted by EM (scikit-learn) to (N, Z) latents."""
    from sklearn.mixture import GaussianMixture

    latents = np.asarray(latents, np.float64)
    if not isinstance(components, int) or components < 1:
        raise ConfigError(f"--components must be a positive integer, got {components!r}")
    if components > len(latents):
        raise ConfigError(f"--components {components} is more than the {len(latents)} latents to fit")
    if covariance not in ("full", "diag"):
        raise ConfigError(f"unknown covariance {covariance!r}: choose full or diag")
    gmm = GaussianMixture(components, covariance_type=covariance, random_state=seed, max_iter=500)
    gmm.fit(latents)
    cov = gmm.covariances_ if covariance == "full" else np.stack([np.diag(v) for v in gmm.covariances_])
    return GMMSampler(gmm.weights_, gmm.means_, cov,
                      {"covariance": covariance, "converged": bool(gmm.converged_), "seed": seed})


@nnx.jit
def _prior_log_prob(model, z):
    return priors.of(model).log_prob(z)


def fit_sampler(vae, train_x: np.ndarray, heldout_x: np.ndarray, components: int, seed: int = 0,
                covariance: str = "full") -> GMMSampler:
    """Fit a GMM to the training examples' posterior means and score the held-out ones' under it and the prior.

    train_x, heldout_x: model inputs (images in [-1, 1] or vectors), binarized already where the model is.
    """
    from jaxvae import sample as sample_lib

    train_z = sample_lib.encode_mean(vae.model, train_x)
    held_z = sample_lib.encode_mean(vae.model, heldout_x)
    fitted = fit_gmm(train_z, components, seed, covariance)
    prior = float(np.mean(np.asarray(_prior_log_prob(vae.model, held_z), np.float64)))
    info = {**fitted.info, "fitted_on": "posterior means of the training split", "components": components,
            "train_examples": len(train_z), "heldout_examples": len(held_z), "z_dim": int(train_z.shape[1]),
            "checkpoint_step": getattr(vae, "checkpoint_step", None),
            "heldout_loglik_sampler": float(np.mean(fitted.log_prob(held_z))), "heldout_loglik_prior": prior}
    return dataclasses.replace(fitted, info=info)


def save_sampler(run_dir: str | Path, sampler: GMMSampler, kind: str = "gmm") -> Path:
    path = sampler_path(run_dir, kind)
    path.parent.mkdir(exist_ok=True)
    run_lib.write_json(path, sampler.to_json())  # atomic: a reader sees the old file or the new one
    return path


def load_sampler(run_dir: str | Path, kind: str = "gmm") -> GMMSampler:
    """The fitted sampler of a run; RunError with the command to fit one when there is none."""
    if kind not in KINDS:
        raise ConfigError(f"unknown sampler {kind!r}: choose one of {', '.join(KINDS)}")
    path = sampler_path(run_dir, kind)
    if not path.is_file():
        raise RunError(f"no {kind} sampler in {run_dir}: fit one first with "
                       f"`jaxvae fit-sampler {run_dir} --kind {kind}`")
    try:
        return GMMSampler.from_json(run_lib.read_json(path))
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"{path} is not a readable {kind} sampler: {e}") from None


def model_inputs(c, dataset, rows: np.ndarray, seed: int) -> np.ndarray:
    """Rows of `dataset` as the model sees them (dataset.model_input: [-1, 1] images or vectors), images
    binarized as the model was trained (c.binarize, images only)."""
    from jaxvae import losses

    x = dataset.model_input(rows)
    if c.binarize:
        x = np.asarray(losses.binarize(x, c.binarize, jax.random.key(seed)))
    return x
