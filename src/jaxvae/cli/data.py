"""The data commands, `jaxvae prepare` and `jaxvae show-data`.

Each run function returns an exit code and raises ConfigError (printed as one line) for bad input.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Annotated

import numpy as np
import tyro
from PIL import Image, PngImagePlugin

from jaxvae.atomic import atomic_path
from jaxvae.cli.common import parse
from jaxvae.config import MAX_IMAGE_SIZE, ConfigError, DataOptions
from jaxvae.data import image_settings, load_images, sources
from jaxvae.data.prepare import prepare_folder, write_array_cache
from jaxvae.outputs import PNG_METADATA, output_file

MAX_WORKERS = 256  # decoding processes


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrepareArgs(DataOptions):
    """Decode a folder of images (or any --data source) once into a memory-mapped uint8 cache."""

    src: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SRC")]
    """The source: a folder, celeba:DIR, .npy/.npz, mnist:DIR, cifar10:DIR (or their -test forms)."""
    out: str
    """The cache folder to write (images.npy and manifest.json); use it as --data when training."""
    cache_dir: tyro.conf.Suppress[str] = ""  # no flag: prepare writes to --out, not to a cache folder
    workers: int = 0
    """Decoding processes (0: one per available core)."""
    overwrite: bool = False
    """Replace --out if it holds a prepared cache (never a file or folder jaxvae did not write)."""
    quiet: bool = False
    """No progress bar."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShowDataArgs(DataOptions):
    """Write a grid of training images (the chapter's dataset figure) as a PNG."""

    out: Annotated[str, tyro.conf.arg(metavar="FILE|DIR")]
    """The PNG file to write (a folder: data.png inside it)."""
    data: str = "shapes"
    """Any --data source (see `jaxvae train --help`)."""
    count: int = 64
    """Images in the grid (a random sample, fixed by --seed)."""
    seed: int = 0
    """Which images are sampled."""
    scale: int = 0
    """Pixels per image pixel in the PNG (0: enough to make each image at least 64 px)."""


def run_prepare(a: PrepareArgs) -> int:
    if not 0 <= a.workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be in [0, {MAX_WORKERS}], got {a.workers}")
    src = sources.parse_source(a.src)
    if src.kind in ("folder", "celeba"):
        m = prepare_folder(src.path, a.out, image_settings(a, src.kind), on_bad_image=a.on_bad_image, workers=a.workers,
                           overwrite=a.overwrite, quiet=a.quiet)
    elif src.kind == "cache":
        raise ConfigError(f"{a.src} is already a prepared cache: train on it with --data {a.src}")
    elif src.kind == "dsprites":
        raise ConfigError("dsprites is drawn on demand, faster than a cache could be read back: train on it with "
                          "--data dsprites --channels 1")
    elif src.kind == "shapes":
        images = load_images(a.src, a)
        m = write_array_cache(images, a.out, a.src, overwrite=a.overwrite)
    else:
        raw = sources.read_array_source(src, a.data_key)
        images = sources.conform(raw, a.image_size, a.channels, a.data_range, name=a.src)
        upscaled = len(images) if raw.shape[1] < a.image_size else 0
        m = write_array_cache(images, a.out, a.src, upscaled=upscaled, overwrite=a.overwrite)
    print(f"jaxvae: wrote {m['count']} images of {a.image_size}x{a.image_size}x{a.channels} to "
          f"{os.path.join(a.out, 'images.npy')} ({m['skipped_count']} skipped, "
          f"{m['upscaled_count']} upscaled)", file=sys.stderr)
    return 0


def run_show_data(a: ShowDataArgs) -> int:
    from jaxvae import plots  # matplotlib: loaded when a grid is drawn, not for --help

    if a.count <= 0 or a.scale < 0:
        raise ConfigError(f"count must be > 0 and scale >= 0, got count {a.count}, scale {a.scale}")
    if a.scale * a.image_size > MAX_IMAGE_SIZE:
        raise ConfigError(f"--scale {a.scale} makes each image {a.scale * a.image_size} px, over {MAX_IMAGE_SIZE}")
    out = output_file(a.out, "data.png")  # never a user's file, never inside a run
    images = load_images(a.data, a)
    rows = np.sort(np.random.default_rng(a.seed).permutation(len(images))[:a.count])
    shown = np.asarray(images[rows])  # (n, S, S, C) uint8
    scale = a.scale or max(1, math.ceil(64 / a.image_size))
    grid = plots.tile(shown, cols=math.ceil(math.sqrt(len(shown))), min_side=scale * shown.shape[1])
    info = PngImagePlugin.PngInfo()
    for key, value in PNG_METADATA.items():
        info.add_text(key, value)
    with atomic_path(out) as tmp:  # never a half-written PNG
        Image.fromarray(grid[..., 0] if shown.shape[-1] == 1 else grid).save(tmp, format="PNG", pnginfo=info)
    print(f"jaxvae: wrote a grid of {len(rows)} images from {a.data} to {out}", file=sys.stderr)
    return 0


def prepare(argv: list[str]) -> int:
    return run_prepare(parse(PrepareArgs, argv, prog="prepare"))


def show_data(argv: list[str]) -> int:
    return run_show_data(parse(ShowDataArgs, argv, prog="show-data"))
