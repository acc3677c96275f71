"""`jaxvae prepare`: decode a folder once into a memory-mapped cache, and find or rebuild that cache.

A cache is a folder holding
  images.npy     uint8 (N, S, S, C), rows in the order of manifest["files"]; training memory-maps it,
                 so a dataset larger than RAM trains;
  manifest.json  source root, sorted relative paths, counts, every skipped file with its reason,
                 the upscaled count, the source fingerprint and the content hash of images.npy.

Bad files are dealt with here, never mid-training: `skip` lists them in the manifest, `error`
stops naming the file. Everything is written into a temporary sibling folder and renamed into
place at the end, so an error or Ctrl-C never leaves a half-written cache.

Training on a folder calls `ensure_cache`, which keeps one cache per (folder, settings) under the
cache dir and rebuilds it when the folder's fingerprint (relative paths, sizes, mtimes) changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import numpy as np
from tqdm import tqdm

from jaxvae.config import ConfigError
from jaxvae.data.decode_worker import decode_in_process, decode_in_workers
from jaxvae.data.images import IMAGE_EXTENSIONS, FoundFile, ImageSettings, list_images

CACHE_FORMAT = "jaxvae-cache-v1"
MIN_IMAGES_FOR_POOL = 500  # below this, starting worker processes (~0.5 s each) costs more than it saves


def default_cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxvae")


def fingerprint(root: str, files: list[FoundFile], skipped: list[tuple[str, str]], s: ImageSettings) -> str:
    """What a cache was built from: changes when a file is added, removed, resized or touched."""
    h = hashlib.sha256(json.dumps([os.path.realpath(root), dataclasses.asdict(s), skipped]).encode())
    for f in files:
        h.update(f"{f.path}\0{f.size}\0{f.mtime_ns}\n".encode("utf-8", "surrogateescape"))  # any file name
    return h.hexdigest()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(out: str, overwrite: bool) -> Iterator[str]:
    """Yield a temporary folder beside `out`; on success it replaces `out`, on error it is removed."""
    from jaxvae.outputs import check_cache_out

    check_cache_out(out, overwrite)  # only an empty folder or a cache is replaced, never a user's file
    out = os.path.abspath(out)
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=os.path.dirname(out))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would make the cache private
    except OSError as e:
        raise ConfigError(f"could not prepare {out}: {e}") from e
    try:
        yield tmp
        if os.path.exists(out):
            trash = tmp + ".old"
            os.rename(out, trash)
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except OSError as e:  # a full disk, a read-only folder: one line, and nothing left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"could not prepare {out}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_manifest(folder: str, manifest: dict) -> None:
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


def _decode_all(root: str, files: list[FoundFile], npy: str, s: ImageSettings, workers: int,
                quiet: bool) -> Iterator[tuple[int, bool, str | None]]:
    """Decode files[row] into row of `npy`, behind a progress bar: (row, upscaled, reason) per file."""
    paths = [os.path.join(root, f.path) for f in files]
    if workers <= 1 or len(paths) < MIN_IMAGES_FOR_POOL:
        results = decode_in_process(npy, paths, s)
    else:
        results = decode_in_workers(npy, paths, s, workers)
    with contextlib.closing(results), tqdm(total=len(paths), desc="prepare", unit="img", disable=quiet,
                                           file=sys.stderr) as bar:
        for result in results:
            yield result
            bar.update()


def _hash_rows(images: np.ndarray) -> str:
    digest = hashlib.sha256()
    for i in range(0, len(images), 4096):
        digest.update(np.ascontiguousarray(images[i:i + 4096]).tobytes())
    return "sha256:" + digest.hexdigest()


def prepare_folder(root: str, out: str, s: ImageSettings, *, on_bad_image: str = "skip", workers: int = 0,
                   overwrite: bool = False, quiet: bool = False) -> dict:
    """Decode every image under `root` into a cache at `out` and return its manifest."""
    if not os.path.isdir(root):
        raise ConfigError(f"no such folder: {root}")
    files, skipped, ignored = list_images(root)
    if not files:
        found = f"{ignored} other files" if ignored else "nothing"
        raise ConfigError(f"no images in {root}: expected {', '.join(e[1:] for e in IMAGE_EXTENSIONS)} "
                          f"files (searched recursively), found {found}")
    if skipped and on_bad_image == "error":
        raise ConfigError(f"bad file {os.path.join(root, skipped[0][0])}: {skipped[0][1]}")
    fp = fingerprint(root, files, skipped, s)
    considered = len(files) + len(skipped)
    workers = workers or len(os.sched_getaffinity(0))
    with atomic_dir(out, overwrite) as tmp:
        npy = os.path.join(tmp, "images.npy")
        shape = (len(files), s.size, s.size, s.channels)
        np.lib.format.open_memmap(npy, "w+", np.uint8, shape).flush()  # created here, filled by decoders
        ok, upscaled = np.zeros(len(files), bool), 0
        with contextlib.closing(_decode_all(root, files, npy, s, workers, quiet)) as results:
            for row, up, reason in results:
                if reason is not None:
                    if on_bad_image == "error":
                        raise ConfigError(f"bad image {os.path.join(root, files[row].path)}: {reason}")
                    skipped.append((files[row].path, reason))
                    continue
                ok[row], upscaled = True, upscaled + up
        kept_rows = np.flatnonzero(ok)
        if not len(kept_rows):
            raise ConfigError(f"no readable images in {root}: all {len(files)} failed, e.g. "
                              f"{skipped[-1][0]}: {skipped[-1][1]}")
        images = np.load(npy, mmap_mode="r")
        if len(kept_rows) < len(files):  # drop the rows of skipped files
            final = np.lib.format.open_memmap(npy + ".part", "w+", np.uint8, (len(kept_rows),) + shape[1:])
            for i in range(0, len(kept_rows), 4096):
                final[i:i + 4096] = images[kept_rows[i:i + 4096]]
            final.flush()
            del images, final
            os.replace(npy + ".part", npy)
            images = np.load(npy, mmap_mode="r")
        content_hash = _hash_rows(images)
        del images
        kept = [files[r].path for r in kept_rows]
        skipped.sort()
        manifest = {
            "format": CACHE_FORMAT, "source": os.path.realpath(root), "kind": "folder",
            "settings": dataclasses.asdict(s), "count": len(kept), "found": len(files),
            "skipped_count": len(skipped), "upscaled_count": upscaled, "ignored_other_files": ignored,
            "source_fingerprint": fp, "content_hash": content_hash,
            "files": kept, "skipped": [{"path": p, "reason": r} for p, r in skipped],
        }
        _write_manifest(tmp, manifest)
    if skipped and not quiet:
        print(f"jaxvae: skipped {len(skipped)} bad file(s) of {considered} in {root}; each is listed "
              f"with its reason in {os.path.join(out, 'manifest.json')}",
              file=sys.stderr)
    return manifest


def write_array_cache(images: np.ndarray, out: str, source: str, *, upscaled: int = 0,
                      overwrite: bool = False) -> dict:
    """Write an already-conformed uint8 (N, S, S, C) array as a cache (for `prepare mnist:DIR` etc.)."""
    n, size, _, channels = images.shape
    with atomic_dir(out, overwrite) as tmp:
        dst = np.lib.format.open_memmap(os.path.join(tmp, "images.npy"), "w+", np.uint8, images.shape)
        digest = hashlib.sha256()
        for i in range(0, n, 4096):
            chunk = np.ascontiguousarray(images[i:i + 4096])
            dst[i:i + 4096] = chunk
            digest.update(chunk.tobytes())
        dst.flush()
        del dst
        manifest = {
            "format": CACHE_FORMAT, "source": source, "kind": "array",
            "settings": {"size": size, "channels": channels}, "count": n, "found": n,
            "skipped_count": 0, "upscaled_count": upscaled, "content_hash": "sha256:" + digest.hexdigest(),
            "files": [], "skipped": [],
        }
        _write_manifest(tmp, manifest)
    return manifest


def open_cache(folder: str) -> tuple[np.ndarray, dict]:
    """Memory-map a cache: ((N, S, S, C) uint8 read-only memmap, manifest)."""
    try:
        with open(os.path.join(folder, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{folder} is not a readable jaxvae cache: manifest.json: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise ConfigError(f"{folder}/manifest.json is not a {CACHE_FORMAT} manifest: prepare the data again")
    try:
        images = np.load(os.path.join(folder, "images.npy"), mmap_mode="r", allow_pickle=False)
        s = manifest["settings"]
        expected = (manifest["count"], s["size"], s["size"], s["channels"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"the cache {folder} is damaged ({type(e).__name__}: {e}): prepare it again"
                          ) from None
    if images.dtype != np.uint8 or images.shape != expected:
        raise ConfigError(f"{folder}/images.npy is {images.dtype} {images.shape} but its manifest says uint8 "
                          f"{expected}: the cache is damaged, prepare it again")
    return images, manifest


def ensure_cache(root: str, s: ImageSettings, *, cache_dir: str = "", on_bad_image: str = "skip",
                 quiet: bool = False) -> str:
    """The cache folder for `root` prepared with `s`, reused while the folder is unchanged."""
    if not os.path.isdir(root):
        raise ConfigError(f"no such folder: {root}")
    real = os.path.realpath(root)
    key = hashlib.sha256(json.dumps([real, dataclasses.asdict(s)]).encode()).hexdigest()[:16]
    out = os.path.join(cache_dir or default_cache_root(), f"{os.path.basename(real) or 'root'}-{key}")
    files, skipped, _ = list_images(root)
    if files and os.path.isfile(os.path.join(out, "manifest.json")):
        try:
            _, manifest = open_cache(out)
        except (ConfigError, OSError, ValueError, KeyError):
            manifest = {}  # damaged: rebuild below
        if manifest.get("source_fingerprint") == fingerprint(root, files, skipped, s):
            if manifest["skipped"] and on_bad_image == "error":
                first = manifest["skipped"][0]
                raise ConfigError(f"bad image {os.path.join(root, first['path'])}: {first['reason']}")
            return out
    if not quiet:
        print(f"jaxvae: preparing {len(files)} images from {root} into {out} (reused while the folder "
              "is unchanged)", file=sys.stderr)
    prepare_folder(root, out, s, on_bad_image=on_bad_image, overwrite=True, quiet=quiet)
    return out
