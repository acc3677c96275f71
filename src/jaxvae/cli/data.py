"""The data commands, `jaxvae prepare` and `jaxvae show-data`.

Each run function returns an exit code and raises ConfigError (printed as one line) for bad input.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
from typing import Annotated

import numpy as np
import tyro
from PIL import Image, PngImagePlugin

from jaxvae.cli.common import parse
from jaxvae.config import MAX_IMAGE_SIZE, ConfigError, check_data_options
from jaxvae.data import DataOptions, load_images, sources
from jaxvae.data.images import ImageSettings
from jaxvae.data.prepare import current_umask, prepare_folder, write_array_cache
from jaxvae.outputs import PNG_METADATA, output_file

MAX_WORKERS = 256  # decoding processes


@dataclasses.dataclass(frozen=True)
class PrepareArgs:
    """Decode a folder of images (or any --data source) once into a memory-mapped uint8 cache."""

    src: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SRC")]
    """The source: a folder, celeba:DIR, .npy/.npz, mnist:DIR, cifar10:DIR (or their -test forms)."""
    out: str
    """The cache folder to write (images.npy and manifest.json); use it as --data when training."""
    image_size: int = 64
    """Side length S of the square images written."""
    channels: int = 3
    """3 for RGB; 1 keeps (or makes) grayscale."""
    background: str = "white"
    """Colour that transparent images are composited over (name or #rrggbb)."""
    on_bad_image: str = "skip"
    """A corrupt, truncated, empty or non-image file: skip (listed in manifest.json) or error."""
    max_image_pixels: int = 100_000_000
    """Larger images are refused as decompression bombs."""
    data_key: str = ""
    """Name of the array inside an .npz file (needed when it holds several)."""
    data_range: str = ""
    """Value range of float arrays: 01 for [0, 1], pm1 for [-1, 1]."""
    workers: int = 0
    """Decoding processes (0: one per available core)."""
    overwrite: bool = False
    """Replace --out if it holds a prepared cache (never a file or folder jaxvae did not write)."""
    quiet: bool = False
    """No progress bar."""


@dataclasses.dataclass(frozen=True)
class ShowDataArgs:
    """Write a grid of training images (the chapter's dataset figure) as a PNG."""

    out: Annotated[str, tyro.conf.arg(metavar="FILE|DIR")]
    """The PNG file to write (a folder: data.png inside it)."""
    data: str = "shapes"
    """Any --data source (see `jaxvae train --help`)."""
    image_size: int = 64
    """Side length S of the images shown."""
    channels: int = 3
    """3 for RGB, 1 for grayscale."""
    count: int = 64
    """Images in the grid (a random sample, fixed by --seed)."""
    seed: int = 0
    """Which images are sampled."""
    scale: int = 0
    """Pixels per image pixel in the PNG (0: enough to make each image at least 64 px)."""
    data_key: str = ""
    """Name of the array inside an .npz file."""
    data_range: str = ""
    """Value range of float arrays: 01 or pm1."""
    background: str = "white"
    """Colour that transparent images are composited over when a folder is prepared."""
    on_bad_image: str = "skip"
    """skip or error, when a folder is prepared."""
    max_image_pixels: int = 100_000_000
    """Larger images are refused as decompression bombs when a folder is prepared."""
    cache_dir: str = ""
    """Where folders are prepared (default $XDG_CACHE_HOME/jaxvae or ~/.cache/jaxvae)."""


def run_prepare(a: PrepareArgs) -> int:
    check_data_options(image_size=a.image_size, channels=a.channels, data_range=a.data_range,
                       background=a.background, on_bad_image=a.on_bad_image,
                       max_image_pixels=a.max_image_pixels)
    if not 0 <= a.workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be in [0, {MAX_WORKERS}], got {a.workers}")
    src = sources.parse_source(a.src)
    if src.kind in ("folder", "celeba"):
        settings = ImageSettings(a.image_size, a.channels, a.background, a.max_image_pixels,
                                 crop="celeba" if src.kind == "celeba" else "center")
        m = prepare_folder(src.path, a.out, settings, on_bad_image=a.on_bad_image, workers=a.workers,
                           overwrite=a.overwrite, quiet=a.quiet)
    elif src.kind == "cache":
        raise ConfigError(f"{a.src} is already a prepared cache: train on it with --data {a.src}")
    elif src.kind == "dsprites":
        raise ConfigError("dsprites is drawn on demand, faster than a cache could be read back: train on it with "
                          "--data dsprites --channels 1")
    elif src.kind == "shapes":
        images = load_images(a.src, DataOptions(image_size=a.image_size, channels=a.channels))
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

    check_data_options(image_size=a.image_size, channels=a.channels, data_range=a.data_range,
                       background=a.background, on_bad_image=a.on_bad_image,
                       max_image_pixels=a.max_image_pixels)
    if a.count <= 0 or a.scale < 0:
        raise ConfigError(f"count must be > 0 and scale >= 0, got count {a.count}, scale {a.scale}")
    if a.scale * a.image_size > MAX_IMAGE_SIZE:
        raise ConfigError(f"--scale {a.scale} makes each image {a.scale * a.image_size} px, over {MAX_IMAGE_SIZE}")
    out = output_file(a.out, "data.png")  # never a user's file, never inside a run
    options = DataOptions(**{f.name: getattr(a, f.name) for f in dataclasses.fields(DataOptions)})
    images = load_images(a.data, options)
    rows = np.sort(np.random.default_rng(a.seed).permutation(len(images))[:a.count])
    shown = np.asarray(images[rows])  # (n, S, S, C) uint8
    scale = a.scale or max(1, math.ceil(64 / a.image_size))
    grid = plots.tile(shown, cols=math.ceil(math.sqrt(len(shown))), min_side=scale * shown.shape[1])
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)  # then rename: never a half-written PNG
    os.close(fd)
    try:
        info = PngImagePlugin.PngInfo()
        for key, value in PNG_METADATA.items():
            info.add_text(key, value)
        Image.fromarray(grid[..., 0] if shown.shape[-1] == 1 else grid).save(tmp, pnginfo=info)  # grayscale stays L
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would make the figure private
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"jaxvae: wrote a grid of {len(rows)} images from {a.data} to {out}", file=sys.stderr)
    return 0


def prepare(argv: list[str]) -> int:
    return run_prepare(parse(PrepareArgs, argv, prog="prepare"))


def show_data(argv: list[str]) -> int:
    return run_show_data(parse(ShowDataArgs, argv, prog="show-data"))
