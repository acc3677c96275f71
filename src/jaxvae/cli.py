"""`jaxvae COMMAND ...`: a thin layer that parses flags (tyro, generated from dataclasses) and calls
the library. Every user-facing problem is one line on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from jaxvae.config import Config, ConfigError, expand_decoder_std, parse_args, preset
from jaxvae.evaluate import run_evaluate
from jaxvae.outputs import make_parent, output_file

Positional = tyro.conf.Positional
# The run positional shows as RUN in usage and help (not STR), in every command that reads a run.
Run = Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]


def picture_out_flag(picture: str):
    """A picture command's --out: None means NAME-<picture>.png (NAME: the run folder's name) right here."""
    hint = f"(default: ./NAME-{picture}.png, NAME the run folder's name)"
    return Annotated[str | None, tyro.conf.arg(metavar="FILE|DIR", help_behavior_hint=hint)]


MAX_SAMPLES = 200  # one PNG grid: 20 rows of 10; more is a job for the Python API (vae.sample)
MAX_COLUMNS = 100  # images in one row of a picture (reconstructions, interpolation steps)


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
    """Replace a run that already exists in --out (only its files; never a folder that is not a run)."""
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


def run_sample(argv: list[str]) -> int:
    from jaxvae import plots

    a = _parse(SampleArgs, argv, prog="sample")
    _positive(n=a.n)
    if a.n > MAX_SAMPLES:
        raise ConfigError(f"--n {a.n} is more than one PNG grid shows (at most {MAX_SAMPLES}): write several "
                          "grids with different --seed values, or draw arrays with the Python API (vae.sample)")
    out = picture_out(a.out, a.run, "samples")
    if a.sampler:  # refused before anything is read or written when there is none
        from jaxvae import run as run_lib
        from jaxvae import samplers

        run_lib.open_run(a.run)
        samplers.load_sampler(a.run, a.sampler)
    vae = _load(a.run, a.checkpoint)
    images = vae.sample(a.n, seed=a.seed, temperature=a.temperature, sampler=a.sampler or None)
    what = f"{a.sampler} sampler" if a.sampler else "prior"
    plots.image_grid(images, make_parent(out), rows=max(1, a.n // 10), title=f"{what} samples, T = {a.temperature}")
    print(f"wrote {a.n} {what} samples of {a.run} to {out}")
    return 0


def run_reconstruct(argv: list[str]) -> int:
    from jaxvae import plots, sample

    a = _parse(ReconstructArgs, argv, prog="reconstruct")
    _positive(n=a.n)
    _at_most(MAX_COLUMNS, n=a.n)
    out = picture_out(a.out, a.run, "reconstructions")
    vae = _load(a.run, a.checkpoint)
    x = vae.held_out(a.n)
    recon = vae.reconstruct(x, data_range="pm1")
    plots.reconstructions(x, recon, sample.pixel_mse(x, recon), make_parent(out))
    print(f"wrote reconstructions of {len(x)} held-out images of {a.run} to {out}")
    return 0


def run_interpolate(argv: list[str]) -> int:
    from jaxvae import plots, sample

    a = _parse(InterpolateArgs, argv, prog="interpolate")
    _positive(steps=a.steps)
    _at_most(MAX_COLUMNS, steps=a.steps)
    if a.method not in sample.INTERPOLATIONS:
        raise ConfigError(f"unknown method {a.method!r}: choose slerp or lerp")
    out = picture_out(a.out, a.run, "interpolation")
    vae = _load(a.run, a.checkpoint)
    x = vae.held_out(max(a.first, a.second) + 1)
    if min(a.first, a.second) < 0 or max(a.first, a.second) >= len(x):
        raise ConfigError(f"--first/--second must index the {len(x)} held-out images")
    latent = vae.interpolate(x[a.first], x[a.second], a.steps, a.method, data_range="pm1")
    pixel = sample.interpolate_pixels(x[a.first], x[a.second], a.steps)
    plots.interpolation(pixel, latent, make_parent(out), method=a.method)
    print(f"wrote the interpolation between held-out images {a.first} and {a.second} of {a.run} to {out}")
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
    return parse_args(cls, argv, prog=f"jaxvae {prog}", default=default)


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


def _at_most(limit: int, **values: int) -> None:
    for name, v in values.items():
        if v > limit:
            raise ConfigError(f"--{name} {v} is more than one picture's row shows (at most {limit})")


def picture_out(out: str | None, run: str, picture: str) -> Path:
    """The PNG a picture command writes, checked before any work (outputs.output_file): --out, or
    NAME-<picture>.png in the current folder or in the folder --out names; never inside a run."""
    path = Path(run).resolve()
    name = f"{(path.stem if path.is_file() else path.name) or 'run'}-{picture}.png"  # a run, or an exported file
    return output_file(name if out is None else out, name)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "usage: jaxvae COMMAND [--help] ...\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv_given, argv = argv, sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"jaxvae: error: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    # stdout/stderr never fail on a path that is not UTF-8 (its undecodable bytes print as \xNN)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    # train stops on Ctrl-C at the next step by itself, after saving (resilience.StopSignals)
    with CtrlC(force=name != "train") as ctrl_c:
        code = _run(name, rest, ctrl_c)
    if argv_given is None and ctrl_c.force and ctrl_c.handled.is_set():
        # interrupted as a program: a device call may still be running, and the interpreter's teardown
        # would wait for it (or crash under it); everything is written or was never started
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


class CtrlC:
    """Ctrl-C in every command: one line, exit status 130, within a second or two.

    The first Ctrl-C raises KeyboardInterrupt in the main thread as usual, which _run turns into
    one line. But Python runs that only between bytecodes, and a long jitted call (an IWAE bound
    with a large K) does not return to Python for minutes. So the signal also wakes a watcher
    thread (signal.set_wakeup_fd writes to a pipe from C, whatever the main thread is doing); if the
    main thread has not handled it within GRACE_S, the watcher prints the line and ends the process.
    Outputs are written to a temporary name and renamed, so nothing is left half-written.
    """

    GRACE_S = 1.5

    def __init__(self, force: bool = True):
        self.force = force and threading.current_thread() is threading.main_thread()
        self.handled = threading.Event()

    def __enter__(self) -> CtrlC:
        if self.force:
            self._read, write = os.pipe()
            os.set_blocking(write, False)
            self._write = write
            self._old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
            self._old_fd = signal.set_wakeup_fd(write)
            threading.Thread(target=self._watch, daemon=True, name="jaxvae-ctrl-c").start()
        return self

    def _watch(self) -> None:
        while data := os.read(self._read, 64):
            if signal.SIGINT in data and not self.handled.wait(self.GRACE_S):
                os.write(2, b"jaxvae: interrupted\n")
                os._exit(130)
        os.close(self._read)

    def __exit__(self, *exc) -> None:
        if self.force:
            signal.set_wakeup_fd(self._old_fd)
            signal.signal(signal.SIGINT, self._old_handler)
            os.close(self._write)  # the watcher reads b"" and ends


def _run(name: str, rest: list[str], ctrl_c: CtrlC) -> int:
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
        ctrl_c.handled.set()
        print(f"jaxvae: {e}" if str(e) else "jaxvae: interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except MemoryError:
        print(f"jaxvae: error: out of memory running `jaxvae {name}`: ask for less (fewer images, a smaller "
              "--limit, --n or --iw-samples)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
