"""One image file -> one (S, S, C) uint8 array, and the search of a folder for image files.

`decode_image` is what `jaxvae prepare` runs in its worker processes, once per file. Every step is
explicit so that a folder of mixed files gives one consistent array:

  1. refuse files of more than `max_pixels` pixels (decompression bombs), before decoding;
  2. decode (JPEGs at a reduced DCT scale when they are much larger than S: fast, still >= 2S);
  3. apply the EXIF orientation;
  4. convert the mode: 1, L, P, CMYK, YCbCr, I;16 and I go to RGB (or stay gray with 1 channel);
     LA, RGBA, PA and P with a transparent colour are composited over `background`;
  5. crop a centred square (`crop="center"`), or CelebA's face crop (`crop="celeba"`, below);
  6. resize it to S x S with Lanczos (antialiased); smaller crops are upscaled and reported.

CelebA crop: the aligned-and-cropped images are 178 x 218 with the face at a fixed place, and the
usual preprocessing (as in the WAE paper, Tolstikhin et al. 2018, and many VAE/GAN codebases)
keeps the central 140 x 140 square, i.e. the box (left 19, top 39, right 159, bottom 179), before
resizing to 64. For other sizes we keep the same proportion: a centred square of side
round(140 / 178 * min(width, height)).
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
from PIL import Image, ImageColor, ImageOps

from jaxvae.config import MAX_IMAGE_PIXELS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
CELEBA_CROP_FRACTION = 140 / 178
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # integer gray; PNG 16-bit opens as I;16
_WITH_ALPHA = ("LA", "La", "RGBA", "RGBa", "PA")


class BadImage(Exception):
    """A file that cannot become an image; its message is the reason written to the manifest."""


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    """Everything the decoded pixels depend on (part of a cache's identity)."""

    size: int  # S
    channels: int  # 1 or 3
    background: str = "white"
    max_pixels: int = MAX_IMAGE_PIXELS
    crop: str = "center"  # center | celeba


@dataclasses.dataclass(frozen=True)
class FoundFile:
    path: str  # relative to the root, with "/" separators
    size: int  # bytes
    mtime_ns: int


def crop_box(width: int, height: int, crop: str) -> tuple[int, int, int, int]:
    """The centred square (left, top, right, bottom) kept from a width x height image."""
    side = min(width, height)
    if crop == "celeba":
        side = max(1, round(CELEBA_CROP_FRACTION * side))
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _explicit_mode(img: Image.Image, channels: int, background: str) -> Image.Image:
    """Any PIL mode -> 'L' (channels 1) or 'RGB' (channels 3), every conversion spelled out."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        # PIL's own convert('L') clips 16-bit values at 255 (a white image); scale them instead.
        values = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8))
    elif mode == "F":
        img = Image.fromarray(np.clip(np.round(np.asarray(img)), 0, 255).astype(np.uint8))
    elif mode == "1":
        img = img.convert("L")
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    if img.mode in _WITH_ALPHA:
        backdrop = Image.new("RGBA", img.size, ImageColor.getrgb(background)[:3] + (255,))
        img = Image.alpha_composite(backdrop, img.convert("RGBA")).convert("RGB")
    if img.mode not in ("L", "RGB"):
        raise BadImage(f"unsupported image mode {mode}")
    want = "L" if channels == 1 else "RGB"
    return img if img.mode == want else img.convert(want)


def _decode(path: str, s: ImageSettings) -> tuple[np.ndarray, bool]:
    if os.path.getsize(path) == 0:
        raise BadImage("empty file (0 bytes)")
    with Image.open(path) as img:
        width, height = img.size
        if width * height > s.max_pixels:
            raise BadImage(f"decompression bomb: {width}x{height} = {width * height:,} pixels is more "
                           f"than the limit of {s.max_pixels:,} (--max-image-pixels)")
        if img.format == "JPEG" and min(width, height) >= 4 * s.size:
            # Decode at 1/2, 1/4 or 1/8 scale, keeping the crop >= 2S for the Lanczos step below.
            k = 2 * s.size / min(width, height)
            img.draft(None, (int(np.ceil(width * k)), int(np.ceil(height * k))))
        img.load()  # gif: the first frame
        img = ImageOps.exif_transpose(img)
        img = _explicit_mode(img, s.channels, s.background)
        box = crop_box(img.width, img.height, s.crop)
        upscaled = box[2] - box[0] < s.size
        # crop first: resize(box=...) would blend in pixels from outside the box at its edges
        img = img.crop(box).resize((s.size, s.size), Image.Resampling.LANCZOS)
        pixels = np.asarray(img, dtype=np.uint8)
    return (pixels[..., None] if pixels.ndim == 2 else pixels), upscaled


def decode_image(path: str, s: ImageSettings) -> tuple[np.ndarray | None, bool, str | None]:
    """Decode one file for a cache.

    Returns:
      (pixels (S, S, C) uint8, upscaled, None), or (None, False, reason) for a bad file: never
      raises, so that one broken file cannot end a prepare with thousands of good ones.
    """
    saved_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our explicit limit in _decode replaces PIL's warning at 89 MP
    try:
        with warnings.catch_warnings():  # e.g. PIL's "corrupt EXIF": nothing a user can act on
            warnings.simplefilter("ignore")
            pixels, upscaled = _decode(path, s)
        return pixels, upscaled, None
    except BadImage as e:
        return None, False, str(e)
    except Image.UnidentifiedImageError:
        return None, False, "not an image (no known image format)"
    except OSError as e:
        if e.errno is not None:  # from the OS: missing, permission denied, a directory, I/O error
            return None, False, f"unreadable: {e.strerror}"
        return None, False, f"truncated or corrupt: {e}"  # from the decoder
    except Exception as e:  # PIL raises many types on malformed data; all of them mean "bad file"
        return None, False, f"corrupt: {type(e).__name__}: {e}"
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def list_images(root: str) -> tuple[list[FoundFile], list[tuple[str, str]], int]:
    """Search `root` recursively for image files (by extension, case-insensitive).

    Symlinks are followed only while they stay inside the root; a link out of the root, a broken
    link, a link loop and a directory seen twice are skipped with their reason.

    Returns:
      (images sorted by relative path, skipped (relative path, reason) pairs, count of other files
      ignored because of their extension).
    """
    real_root = os.path.realpath(root)
    found: list[FoundFile] = []
    skipped: list[tuple[str, str]] = []
    ignored = 0
    seen_dirs = {real_root}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, rel_dir)), key=lambda e: e.name)
        except OSError as e:
            skipped.append((rel_dir or ".", f"unreadable directory: {e.strerror}"))
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if entry.is_symlink():
                    try:
                        target = os.path.realpath(entry.path, strict=True)
                    except OSError as e:  # ELOOP or a dangling link
                        skipped.append((rel, f"broken symlink or symlink loop: {e.strerror}"))
                        continue
                    if not _inside(target, real_root):
                        skipped.append((rel, f"symlink points outside the root, to {target}"))
                        continue
                if entry.is_dir():
                    real = os.path.realpath(entry.path)
                    if real in seen_dirs:
                        skipped.append((rel, "directory already searched (a symlink loop or duplicate)"))
                        continue
                    seen_dirs.add(real)
                    stack.append(rel)
                elif entry.is_file():
                    if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                        st = entry.stat()
                        found.append(FoundFile(rel, st.st_size, st.st_mtime_ns))
                    else:
                        ignored += 1
            except OSError as e:
                skipped.append((rel, f"unreadable: {e.strerror}"))
    found.sort(key=lambda f: f.path)
    skipped.sort()
    return found, skipped, ignored
