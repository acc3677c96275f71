"""`jaxvae COMMAND ...`: a thin layer that parses flags (tyro, generated from dataclasses) and calls
the library. Every user-facing problem is one line on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from jaxvae.config import Config, ConfigError, expand_decoder_std, preset
from jaxvae.evaluate import run_evaluate

Positional = tyro.conf.Positional


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """Train a VAE. `--preset` picks the defaults (seed: the chapter's; tiny: a CPU demo); every
    other flag overrides one field of the preset. Writes config.json, metrics.jsonl, checkpoints/,
    summary.json and the chapter's pictures into --out."""

    config: Annotated[Config, tyro.conf.arg(name="")]
    preset: str = "seed"
    """Named defaults: seed (the chapter's) | tiny (the conv CPU demo) | tiny-transformer."""
    out: str = "runs/default"
    """Run directory to create."""
    overwrite: bool = False
    """Replace a run that already exists in --out."""
    resume: str | None = None
    """Continue this run from its latest checkpoint (instead of --out); its config is the default."""
    quiet: bool = False
    """No progress bar or log lines."""
    tensorboard: bool = False
    """Also write TensorBoard event files to OUT/tensorboard (needs the tensorboardX extra)."""
    coordinator: str = ""
    """Multi-host: HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS); empty for one process."""
    num_processes: int = 0
    """Multi-host: number of processes (or JAX_NUM_PROCESSES)."""
    process_id: int = -1
    """Multi-host: this process's index, 0 first (or JAX_PROCESS_ID)."""


@dataclasses.dataclass(frozen=True)
class SampleArgs:
    """Decode draws from the prior of a trained run (z ~ N(0, T^2 I) for the normal prior), or from a fitted
    sampler (--sampler gmm), into a PNG grid."""

    run: Positional[str]
    """Run directory, or a model file written by `jaxvae export`."""
    out: str = "samples.png"
    """PNG file to write."""
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

    run: Positional[str]
    """Run directory, or a model file written by `jaxvae export`."""
    out: str = "reconstructions.png"
    """PNG file to write."""
    n: int = 10
    """Number of held-out images."""
    checkpoint: str = "best"
    """Which checkpoint: best (by validation loss) | latest | a step number."""


@dataclasses.dataclass(frozen=True)
class InterpolateArgs:
    """Interpolate between two held-out images: a pixel-space row over a latent-space row."""

    run: Positional[str]
    """Run directory, or a model file written by `jaxvae export`."""
    out: str = "interpolation.png"
    """PNG file to write."""
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
class EncodeArgs:
    """Encode every example of a --data source into latents: an .npz holding mean and log_std (N, Z),
    index (N,) (the source's order), sample (N, Z) with --what sample|both, and the source's factors or
    labels where it has them. Prints the latent scale (1 / std of the posterior means)."""

    run: Positional[str]
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

    run: Positional[str]
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


def run_encode(argv: list[str]) -> int:
    from jaxvae import encode

    a = _parse(EncodeArgs, argv, prog="encode")
    out = encode.check_output(a.out, a.overwrite, ".npz")  # refused before anything is read
    if a.what not in encode.WHAT:
        raise ConfigError(f"unknown --what {a.what!r}: choose one of {', '.join(encode.WHAT)}")
    _positive(batch_size=a.batch_size)
    vae = _load(a.run, a.checkpoint)
    x = encode.load_examples(vae.config, a.data, a.data_key, a.data_range)
    extras = encode.source_extras(vae.config, a.data)
    for name, value in extras.items():
        if name != "factor_names" and len(value) != len(x):
            raise ConfigError(f"--data {a.data} has {len(x)} examples but {len(value)} {name}")
    z = encode.encode_dataset(vae, x, what=a.what, seed=a.seed, batch_size=a.batch_size, progress=not a.quiet)
    std = encode.latent_std(z["mean"])
    scale = encode.scale_from_std(std)
    keep = {"mean": a.what != "sample", "log_std": a.what != "sample", "sample": a.what != "mean", "index": True}
    arrays = {k: v for k, v in z.items() if keep[k]} | extras
    arrays["latent_scale"] = np.float64(np.nan if scale is None else scale)
    encode.write_npz(out, arrays)
    print(f"encoded {len(x)} examples of {a.data} with {a.run}: wrote {out} ({', '.join(arrays)})")
    print(f"latent std {std:.6g} (posterior means, all {vae.config.z_dim} dims pooled); latent_scale = 1/std = "
          + (f"{scale:.6g}" if scale is not None else "undefined (the means do not vary)"))
    return 0


def run_export(argv: list[str]) -> int:
    from jaxvae import encode, export

    a = _parse(ExportArgs, argv, prog="export")
    out = encode.check_output(a.out, a.overwrite, export.SUFFIX)
    if Path(a.run).is_file():
        raise ConfigError(f"{a.run} is a file: export takes a run directory")
    vae = _load(a.run, a.checkpoint)
    scale, where = encode.run_latent_scale(vae, a.data)
    which = f"{vae.checkpoint_step} ({vae.checkpoint_note})"
    export.save(vae, out, latent_scale=scale, latent_scale_examples=where, checkpoint=which)
    print(f"wrote {out}: {vae.config.arch} VAE, z_dim {vae.config.z_dim}, checkpoint {which}; "
          f"latent_scale {scale if scale is None else f'{scale:.6g}'} over {where}")
    return 0


def run_train(argv: list[str]) -> int:
    from jaxvae import parallel
    from jaxvae.resilience import resume_config
    from jaxvae.train import train

    name, resume = _preset_name(argv), _flag(argv, "--resume")
    argv = expand_decoder_std(argv)
    base = resume_config(resume, preset=_flag(argv, "--preset"), out=_flag(argv, "--out")) if resume else preset(name)
    args = _parse(TrainArgs, argv, default=TrainArgs(config=base, preset=name), prog="train")
    parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    train(args.config, args.resume or args.out, overwrite=args.overwrite, quiet=args.quiet,
          resume=args.resume is not None, tensorboard=args.tensorboard, preset=None if args.resume else name)
    return 0


def _load(run: str, checkpoint: str):
    """jaxvae.load(run, checkpoint), saying on stderr which checkpoint it used."""
    import jaxvae
    from jaxvae.api import say_checkpoint

    vae = jaxvae.load(run, checkpoint=checkpoint)
    say_checkpoint(vae)
    return vae


def _held_out(vae, n: int):
    from jaxvae import data as data_lib

    return data_lib.to_model_range(data_lib.load_dataset(vae.config).val[:n])


def run_sample(argv: list[str]) -> int:
    from jaxvae import plots

    a = _parse(SampleArgs, argv, prog="sample")
    _positive(n=a.n)
    if a.sampler:  # refused before anything is read or written when there is none
        from jaxvae import run as run_lib
        from jaxvae import samplers

        run_lib.open_run(a.run)
        samplers.load_sampler(a.run, a.sampler)
    vae = _load(a.run, a.checkpoint)
    images = vae.sample(a.n, seed=a.seed, temperature=a.temperature, sampler=a.sampler or None)
    what = f"{a.sampler} sampler" if a.sampler else "prior"
    plots.image_grid(images, _out(a.out), rows=max(1, a.n // 10), title=f"{what} samples, T = {a.temperature}")
    return 0


def run_reconstruct(argv: list[str]) -> int:
    from jaxvae import plots, sample

    a = _parse(ReconstructArgs, argv, prog="reconstruct")
    _positive(n=a.n)
    vae = _load(a.run, a.checkpoint)
    x = _held_out(vae, a.n)
    recon = vae.reconstruct(x)
    plots.reconstructions(x, recon, sample.pixel_mse(x, recon), _out(a.out))
    return 0


def run_interpolate(argv: list[str]) -> int:
    from jaxvae import plots, sample

    a = _parse(InterpolateArgs, argv, prog="interpolate")
    _positive(steps=a.steps)
    if a.method not in sample.INTERPOLATIONS:
        raise ConfigError(f"unknown method {a.method!r}: choose slerp or lerp")
    vae = _load(a.run, a.checkpoint)
    x = _held_out(vae, max(a.first, a.second) + 1)
    if min(a.first, a.second) < 0 or max(a.first, a.second) >= len(x):
        raise ConfigError(f"--first/--second must index the {len(x)} held-out images")
    latent = vae.interpolate(x[a.first], x[a.second], a.steps, a.method)
    pixel = sample.interpolate_pixels(x[a.first], x[a.second], a.steps)
    plots.interpolation(pixel, latent, _out(a.out), method=a.method)
    return 0


def run_prepare(argv: list[str]) -> int:
    from jaxvae.data import commands

    return commands.run_prepare(_parse(commands.PrepareArgs, argv, prog="prepare"))


def run_show_data(argv: list[str]) -> int:
    from jaxvae.data import commands

    return commands.run_show_data(_parse(commands.ShowDataArgs, argv, prog="show-data"))


def run_report(argv: list[str]) -> int:
    from jaxvae import report

    return report.run_report(argv)


def run_fit_sampler(argv: list[str]) -> int:
    from jaxvae import samplers

    return samplers.run_fit_sampler(argv)


def run_traverse(argv: list[str]) -> int:
    from jaxvae import latents

    return latents.run_traverse(argv)


# name -> (function taking the remaining argv, one-line description)
COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (run_train, "train a VAE (--preset seed|tiny|tiny-transformer, every config field a flag)"),
    "sample": (run_sample, "decode prior samples of a run into a PNG"),
    "reconstruct": (run_reconstruct, "reconstruct held-out images of a run into a PNG"),
    "interpolate": (run_interpolate, "interpolate between two held-out images into a PNG"),
    "prepare": (run_prepare, "decode an image folder/dataset once into a uint8 cache for training"),
    "show-data": (run_show_data, "write a grid of dataset images to a PNG"),
    "report": (run_report, "write a run's self-contained HTML report (RUN/report.html)"),
    "traverse": (run_traverse, "latent traversals of the most active (or --dims) dimensions into a PNG"),
    "encode": (run_encode, "encode every example of a --data source into latents (.npz), with the latent scale"),
    "export": (run_export, "write a run's parameters, config and latent scale as one .safetensors file"),
    "fit-sampler": (run_fit_sampler, "fit a sampler (gmm) to a run's latent codes: RUN/samplers/gmm.json"),
    "evaluate": (run_evaluate, "-ELBO, IWAE log p(x), bits/dim, MSE/PSNR/SSIM, active units, KL per dim, MI"),
}


def _parse(cls, argv: list[str], prog: str, default=None):
    return tyro.cli(cls, args=argv, default=default, prog=f"jaxvae {prog}")


def _preset_name(argv: list[str]) -> str:
    """The --preset value, read before parsing since it sets every other flag's default."""
    return _flag(argv, "--preset") or "seed"


def _flag(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _positive(**values: int) -> None:
    for name, v in values.items():
        if v <= 0:
            raise ConfigError(f"--{name} must be positive, got {v}")


def _out(path: str) -> Path:
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "usage: jaxvae COMMAND [--help] ...\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"jaxvae: error: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[name][0](rest)
    except ConfigError as e:
        print(f"jaxvae: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, missing files: one line, not a traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"jaxvae: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # train saves first on SIGTERM/SIGINT and says how to resume
        print(f"jaxvae: {e}" if str(e) else "jaxvae: interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
