"""The commands on a trained model's latent codes: `jaxvae encode`, `export` and `fit-sampler`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxvae.cli.common import Run, load, parse, positive
from jaxvae.config import ConfigError


@dataclasses.dataclass(frozen=True)
class EncodeArgs:
    """Encode every example of a --data source into latents: an .npz holding mean and log_std (N, Z),
    index (N,) (the source's order), sample (N, Z) with --what sample|both, and the source's factors or
    labels where it has them. Prints the latent scale (1 / std of the posterior means)."""

    run: Run
    """Run directory, or a model file written by `jaxvae export`."""
    data: str
    """What to encode: any --data source (shapes, a folder, a cache, .npy/.npz, mnist:DIR, ...)."""
    out: str = "latents.npz"
    """The .npz file to write (never inside a run directory)."""
    what: str = "mean"
    """mean (mean and log_std of q(z|x)) | sample (one draw z ~ q(z|x)) | both."""
    seed: int = 0
    """Seed of the samples: example i draws from fold_in(key(seed), i)."""
    checkpoint: str = "best"
    """Which checkpoint of the run: best (by validation loss) | latest | a step number."""
    batch_size: int = 256
    """Examples per device call (rounded up to a multiple of the local devices)."""
    data_key: str = ""
    """Name of the array inside an .npz --data (default: the run's)."""
    data_range: str = ""
    """Value range of a float --data array: 01 | pm1 (default: the run's)."""
    overwrite: bool = False
    """Replace --out if it exists."""
    quiet: bool = False
    """No progress bar."""


@dataclasses.dataclass(frozen=True)
class ExportArgs:
    """Write a run's parameters as one safetensors file, with the resolved config, the jaxvae version,
    a format number and the latent scale in its metadata. `jaxvae.load(FILE)` gives the same model
    as `jaxvae.load(RUN)`, without the run."""

    run: Run
    """Run directory."""
    out: str = "model.safetensors"
    """The .safetensors file to write (never inside a run directory)."""
    checkpoint: str = "best"
    """Which checkpoint of the run: best (by validation loss) | latest | a step number."""
    data: str = ""
    """Measure the latent scale on this --data source (default: the run's training split, at most
    4096 examples, evenly strided)."""
    overwrite: bool = False
    """Replace --out if it exists."""


@dataclasses.dataclass(frozen=True)
class FitSamplerArgs:
    """Fit a sampler to a trained run's latent codes and write it to RUN/samplers/<kind>.json (atomically;
    the only file it writes). `jaxvae sample RUN --sampler <kind>` then draws from it."""

    run: Run
    """Run directory."""
    kind: str = "gmm"
    """gmm: a Gaussian mixture fitted to the training split's posterior means."""
    components: int = 10
    """Mixture components K."""
    covariance: str = "full"
    """Component covariances: full | diag."""
    checkpoint: str = "best"
    """Which checkpoint's encoder: best (by validation loss) | latest | a step number."""
    limit: int = 0
    """Fit to at most this many training examples (0: all)."""
    seed: int = 0
    """Seed of the mixture's initialisation (and of a dynamic binarization of the data)."""


def encode(argv: list[str]) -> int:
    a = parse(EncodeArgs, argv, prog="encode")
    from jaxvae import encode as encode_lib

    out = encode_lib.check_output(a.out, a.overwrite, ".npz")  # refused before anything is read
    if a.what not in encode_lib.WHAT:
        raise ConfigError(f"unknown --what {a.what!r}: choose one of {', '.join(encode_lib.WHAT)}")
    positive(batch_size=a.batch_size)
    vae = load(a.run, a.checkpoint)
    x = encode_lib.load_examples(vae.config, a.data, a.data_key, a.data_range)
    extras = encode_lib.source_extras(vae.config, a.data)
    for name, value in extras.items():
        if name != "factor_names" and len(value) != len(x):
            raise ConfigError(f"--data {a.data} has {len(x)} examples but {len(value)} {name}")
    z = encode_lib.encode_dataset(vae, x, what=a.what, seed=a.seed, batch_size=a.batch_size, progress=not a.quiet)
    std = encode_lib.latent_std(z["mean"])
    scale = encode_lib.scale_from_std(std)
    keep = {"mean": a.what != "sample", "log_std": a.what != "sample", "sample": a.what != "mean", "index": True}
    arrays = {k: v for k, v in z.items() if keep[k]} | extras
    arrays["latent_scale"] = np.float64(np.nan if scale is None else scale)
    encode_lib.write_npz(out, arrays)
    print(f"encoded {len(x)} examples of {a.data} with {a.run}: wrote {out} ({', '.join(arrays)})")
    print(f"latent std {std:.6g} (posterior means, all {vae.config.z_dim} dims pooled); latent_scale = 1/std = "
          + (f"{scale:.6g}" if scale is not None else "undefined (the means do not vary)"))
    return 0


def export(argv: list[str]) -> int:
    a = parse(ExportArgs, argv, prog="export")
    from jaxvae import encode as encode_lib
    from jaxvae import export as export_lib

    out = encode_lib.check_output(a.out, a.overwrite, export_lib.SUFFIX)
    if Path(a.run).is_file():
        raise ConfigError(f"{a.run} is a file: export takes a run directory")
    vae = load(a.run, a.checkpoint)
    scale, where = encode_lib.run_latent_scale(vae, a.data)
    which = f"{vae.checkpoint_step} ({vae.checkpoint_note})"
    export_lib.save(vae, out, latent_scale=scale, latent_scale_examples=where, checkpoint=which)
    print(f"wrote {out}: {vae.config.arch} VAE, z_dim {vae.config.z_dim}, checkpoint {which}; "
          f"latent_scale {scale if scale is None else f'{scale:.6g}'} over {where}")
    return 0


def fit_sampler(argv: list[str]) -> int:
    a = parse(FitSamplerArgs, argv, prog="fit-sampler")
    from jaxvae import data as data_lib
    from jaxvae import samplers

    if a.kind not in samplers.KINDS:
        raise ConfigError(f"unknown --kind {a.kind!r}: choose one of {', '.join(samplers.KINDS)}")
    if a.components < 1:
        raise ConfigError(f"--components must be positive, got {a.components}")
    if a.limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {a.limit}")
    if a.covariance not in ("full", "diag"):
        raise ConfigError(f"unknown --covariance {a.covariance!r}: choose full or diag")
    vae = load(a.run, a.checkpoint)  # refuses a run without a checkpoint; reads only
    dataset = data_lib.load_dataset(vae.config)
    train = dataset.train[: a.limit] if a.limit else dataset.train
    held = dataset.val
    if len(held) == 0:  # no validation split: hold out the last tenth of the training rows instead
        cut = max(1, len(train) // 10)
        train, held = train[:-cut], train[-cut:]
    if len(train) == 0:
        raise ConfigError(f"{vae.config.data} has too few examples to fit a sampler")
    fitted = samplers.fit_sampler(vae, samplers.model_inputs(vae.config, dataset, np.asarray(train), a.seed),
                                  samplers.model_inputs(vae.config, dataset, np.asarray(held), a.seed + 1),
                                  a.components, a.seed, a.covariance)
    path = samplers.save_sampler(vae.run_dir, fitted, a.kind)
    print(f"wrote {path}: held-out latent log-likelihood {fitted.heldout_loglik_sampler:.3f} nats under the "
          f"sampler, {fitted.heldout_loglik_prior:.3f} under the prior")
    return 0
