"""The picture commands: `jaxvae sample`, `reconstruct`, `interpolate` and `traverse`, each one PNG."""

from __future__ import annotations

import dataclasses

from jaxvae.cli.common import (
    MAX_COLUMNS,
    MAX_SAMPLES,
    Run,
    at_most,
    load,
    parse,
    picture_out,
    picture_out_flag,
    positive,
)
from jaxvae.config import TRAVERSAL_SPAN, TRAVERSAL_STEPS, TRAVERSAL_TOP, ConfigError
from jaxvae.outputs import make_parent


@dataclasses.dataclass(frozen=True)
class SampleArgs:
    """Decode draws from the prior of a trained run (z ~ N(0, T^2 I) for the normal prior), or from a fitted
    sampler (--sampler gmm), into a PNG grid."""

    run: Run
    """Run directory, or a model file written by `jaxvae export`."""
    out: picture_out_flag("samples") = None
    """PNG file to write, or a folder to write it into."""
    n: int = 20
    """Number of samples."""
    temperature: float = 1.0
    """Prior temperature T (scale of z)."""
    seed: int = 0
    """Seed of the draws."""
    sampler: str = ""
    """Draw z from a sampler fitted by `jaxvae fit-sampler` (gmm) instead of the prior."""
    checkpoint: str = "best"
    """Which checkpoint: best (by validation loss) | latest | a step number."""


@dataclasses.dataclass(frozen=True)
class ReconstructArgs:
    """Reconstruct held-out images of the run's data: originals over reconstructions, with the MSE."""

    run: Run
    """Run directory, or a model file written by `jaxvae export`."""
    out: picture_out_flag("reconstructions") = None
    """PNG file to write, or a folder to write it into."""
    n: int = 10
    """Number of held-out images."""
    checkpoint: str = "best"
    """Which checkpoint: best (by validation loss) | latest | a step number."""


@dataclasses.dataclass(frozen=True)
class InterpolateArgs:
    """Interpolate between two held-out images: a pixel-space row over a latent-space row."""

    run: Run
    """Run directory, or a model file written by `jaxvae export`."""
    out: picture_out_flag("interpolation") = None
    """PNG file to write, or a folder to write it into."""
    steps: int = 10
    """Images per row."""
    method: str = "slerp"
    """Latent interpolation: slerp | lerp."""
    first: int = 0
    """Index of the first held-out image."""
    second: int = 1
    """Index of the second held-out image."""
    checkpoint: str = "best"
    """Which checkpoint: best (by validation loss) | latest | a step number."""


@dataclasses.dataclass(frozen=True)
class TraverseArgs:
    """Latent traversals of a trained run: each row decodes one held-out image's posterior mean with
    one latent dimension swept over [-span, +span] prior sigmas. By default the most active
    dimensions (largest mean KL over held-out images), largest first."""

    run: Run
    """Run directory."""
    out: picture_out_flag("traversals") = None
    """PNG file to write, or a folder to write it into."""
    dims: tuple[int, ...] = ()
    """Latent dimensions to sweep, e.g. `--dims 3 7 12`; default: the --top most active."""
    top: int = TRAVERSAL_TOP
    """How many of the most active dimensions when --dims is not given."""
    steps: int = TRAVERSAL_STEPS
    """Images per row."""
    span: float = TRAVERSAL_SPAN
    """Sweep [-span, +span] prior sigmas."""
    image: int = 0
    """Index of the held-out image whose posterior mean the other dimensions keep."""
    checkpoint: str = "best"
    """Which checkpoint: best (by validation loss) | latest | a step number."""



def sample(argv: list[str]) -> int:
    a = parse(SampleArgs, argv, prog="sample")
    from jaxvae import plots

    positive(n=a.n)
    if a.n > MAX_SAMPLES:
        raise ConfigError(f"--n {a.n} is more than one PNG grid shows (at most {MAX_SAMPLES}): write several "
                          "grids with different --seed values, or draw arrays with the Python API (vae.sample)")
    out = picture_out(a.out, a.run, "samples")
    if a.sampler:  # refused before anything is read or written when there is none
        from jaxvae import run as run_lib
        from jaxvae import samplers

        run_lib.open_run(a.run)
        samplers.load_sampler(a.run, a.sampler)
    vae = load(a.run, a.checkpoint)
    if a.sampler:
        images = vae.sample(a.n, seed=a.seed, temperature=a.temperature, sampler=a.sampler)
    else:  # the key a run's own samples.png is drawn from when --seed is the run's seed (pictures.run_key)
        import jax

        from jaxvae import pictures

        wanted = pictures.Wanted(samples=a.n, temperatures=(a.temperature,))
        images = pictures.pictures(vae.model, None, jax.random.key(a.seed), wanted)["samples"][0]
    what = f"{a.sampler} sampler" if a.sampler else "prior"
    plots.prior_samples(images, make_parent(out), rows=max(1, a.n // 10), title=f"{what} samples, T = {a.temperature}")
    print(f"wrote {a.n} {what} samples of {a.run} to {out}")
    return 0


def _held_out(vae, n: int):
    """The first n held-out images of the run's data, uint8 as stored."""
    from jaxvae import data as data_lib

    return data_lib.load_dataset(vae.config).val[:n]


def reconstruct(argv: list[str]) -> int:
    a = parse(ReconstructArgs, argv, prog="reconstruct")
    from jaxvae import pictures, plots

    positive(n=a.n)
    at_most(MAX_COLUMNS, n=a.n)
    out = picture_out(a.out, a.run, "reconstructions")
    vae = load(a.run, a.checkpoint)
    drawn = pictures.pictures(vae.model, _held_out(vae, a.n), None, pictures.Wanted(reconstructions=a.n))
    plots.reconstructions(drawn["originals"], drawn["reconstructions"], drawn["reconstruction_mse"], make_parent(out))
    print(f"wrote reconstructions of {len(drawn['originals'])} held-out images of {a.run} to {out}")
    return 0


def interpolate(argv: list[str]) -> int:
    a = parse(InterpolateArgs, argv, prog="interpolate")
    from jaxvae import pictures, plots, sample

    positive(steps=a.steps)
    at_most(MAX_COLUMNS, steps=a.steps)
    if a.method not in sample.INTERPOLATIONS:
        raise ConfigError(f"unknown method {a.method!r}: choose slerp or lerp")
    out = picture_out(a.out, a.run, "interpolation")
    vae = load(a.run, a.checkpoint)
    x = _held_out(vae, max(a.first, a.second) + 1)
    if min(a.first, a.second) < 0 or max(a.first, a.second) >= len(x):
        raise ConfigError(f"--first/--second must index the {len(x)} held-out images")
    wanted = pictures.Wanted(interpolations=("pixel", a.method), pair=(a.first, a.second), steps=a.steps)
    drawn = pictures.pictures(vae.model, x, None, wanted)
    plots.interpolation(drawn["pixel"], drawn[a.method], make_parent(out), method=a.method)
    print(f"wrote the interpolation between held-out images {a.first} and {a.second} of {a.run} to {out}")
    return 0


def traverse(argv: list[str]) -> int:
    a = parse(TraverseArgs, argv, prog="traverse")
    from jaxvae import data as data_lib
    from jaxvae import pictures, plots
    from jaxvae import run as run_lib

    positive(top=a.top, steps=a.steps)
    at_most(MAX_COLUMNS, steps=a.steps)
    if not a.span > 0:
        raise ConfigError(f"--span must be > 0, got {a.span}")
    _, config = run_lib.open_run(a.run)  # bad input is refused before the checkpoint is read
    out = picture_out(a.out, a.run, "traversals")
    dims = tuple(pictures.check_dims(a.dims, config.z_dim)) if a.dims else ()
    val = data_lib.load_dataset(config).val
    if not 0 <= a.image < len(val):
        raise ConfigError(f"--image must index the {len(val)} held-out images, got {a.image}")
    vae = load(a.run, a.checkpoint)
    wanted = pictures.Wanted(traversals=a.top, dims=dims, traversal_steps=a.steps, span=a.span, image=a.image)
    drawn = pictures.pictures(vae.model, val, None, wanted)
    dims = drawn["traversal_dims"]
    plots.traversal_grid(drawn["traversals"], dims, drawn["traversal_values"], make_parent(out), kl=drawn["kl_per_dim"])
    print(f"wrote traversals of {len(dims)} latent dimensions of {a.run} to {out}")
    return 0
