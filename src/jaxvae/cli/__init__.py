"""`jaxvae COMMAND ...`: a thin layer that parses flags (tyro, generated from dataclasses) and calls
the library. Every user-facing problem is one line on stderr and exit status 2, no traceback.

One module per group of commands; each command is `module.function(argv) -> exit status`, imported
only when it runs, so `jaxvae --help` and `jaxvae COMMAND --help` import no JAX:

    train.py     train
    pictures.py  sample, reconstruct, interpolate, traverse
    evaluate.py  evaluate
    latents.py   encode, export, fit-sampler
    report.py    report
    data.py      prepare, show-data
"""

from __future__ import annotations

import importlib
import os
import sys

from jaxvae.cli.ctrl_c import CtrlC
from jaxvae.config import ConfigError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before JAX loads, however the CLI was started

# name -> ("module:function" under jaxvae.cli, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train:run", "train a VAE (--preset seed|tiny|tiny-transformer, every config field a flag)"),
    "sample": ("pictures:sample", "decode prior samples of a run into a PNG"),
    "reconstruct": ("pictures:reconstruct", "reconstruct held-out images of a run into a PNG"),
    "interpolate": ("pictures:interpolate", "interpolate between two held-out images into a PNG"),
    "prepare": ("data:prepare", "decode an image folder/dataset once into a uint8 cache for training"),
    "show-data": ("data:show_data", "write a grid of dataset images to a PNG"),
    "report": ("report:run", "write a run's self-contained HTML report (RUN/report.html)"),
    "traverse": ("pictures:traverse", "latent traversals of the most active (or --dims) dimensions into a PNG"),
    "encode": ("latents:encode", "encode every example of a --data source into latents (.npz), with the latent scale"),
    "export": ("latents:export", "write a run's parameters, config and latent scale as one .safetensors file"),
    "fit-sampler": ("latents:fit_sampler", "fit a sampler (gmm) to a run's latent codes: RUN/samplers/gmm.json"),
    "evaluate": ("evaluate:run", "-ELBO, IWAE log p(x), bits/dim, MSE/PSNR/SSIM, active units, KL per dim, MI"),
}


def command(name: str):
    """The function `(argv) -> exit status` of command `name`."""
    module, function = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(f"jaxvae.cli.{module}"), function)


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


def _run(name: str, rest: list[str], ctrl_c: CtrlC) -> int:
    try:
        return command(name)(rest)
    except ConfigError as e:  # RunError is one too
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
