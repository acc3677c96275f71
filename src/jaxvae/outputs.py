"""The one `--out` policy of every command that writes: jaxvae replaces only what jaxvae wrote.

  a run folder     (train --out)       new, empty, or a jaxvae run (config.json + meta.json); a run is
                                       replaced only with --overwrite, and then only its own files go
  a cache folder   (prepare --out)     new, empty, or a prepared cache (manifest.json [+ images.npy]);
                                       replaced only with --overwrite
  an output file   (sample, reconstruct, interpolate, traverse, show-data, evaluate --out,
                    report --out)      new, or a file jaxvae wrote (the marker below); an existing
                                       folder or a trailing slash means "write inside it"

Anything else (a user's file, a non-empty folder that is not jaxvae's) is refused in one line even
with --overwrite, and an empty --out is refused: it would mean the current directory.
A file jaxvae wrote carries a marker: the PNG text chunk Software = "jaxvae ...", the JSON key
"jaxvae_version", the HTML <meta name="generator" content="jaxvae ...">.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jaxvae.run import CONFIG, META, RUN_FILES, VERSION, RunError

SOFTWARE = f"jaxvae {VERSION}"  # the marker of every file jaxvae writes
PNG_METADATA = {"Software": SOFTWARE}  # matplotlib savefig(metadata=...) / PIL PngInfo text
HTML_GENERATOR = f'<meta name="generator" content="{SOFTWARE}">'
CACHE_FILES = ("images.npy", "manifest.json")


def _given(out: str | os.PathLike, flag: str) -> Path:
    if not str(out).strip():
        raise RunError(f"{flag} must not be empty (it would mean the current directory): give a path")
    return Path(out)


def _listing(names: list[str], limit: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _folder_entries(out: str | os.PathLike, flag: str) -> tuple[Path, list[str]]:
    """The folder an output flag names and what it holds ([] when new); never a file, even with --overwrite."""
    path = _given(out, flag)
    if path.exists() and not path.is_dir():
        raise RunError(f"{flag} {path} exists and is not a folder; jaxvae does not replace it, even with "
                       "--overwrite: choose another --out")
    return path, os.listdir(path) if path.is_dir() else []


def check_run_out(out: str | os.PathLike, overwrite: bool, flag: str = "--out") -> list[str]:
    """Refuse an `out` that `train` may not write; return the run files that --overwrite will replace."""
    path, entries = _folder_entries(out, flag)
    if not entries:
        return []
    ours = [name for name in entries if name in RUN_FILES or name.endswith(".tmp")]
    is_run = (path / CONFIG).is_file() and (path / META).is_file()
    if not is_run and len(ours) < len(entries):  # a user's folder, or a run with another's files in it
        others = [name for name in entries if name not in ours]
        raise RunError(f"{flag} {path} is a non-empty folder that is not a jaxvae run (it holds "
                       f"{_listing(others)}); jaxvae does not write into it, even with --overwrite: "
                       "choose a new or empty folder")
    existing = [name for name in RUN_FILES if name in entries]
    if not overwrite:
        raise RunError(f"{flag} {path} already holds a run ({_listing(existing, 6)}); "
                       "pass --overwrite to replace it or --resume to continue it")
    return existing


def check_cache_out(out: str | os.PathLike, overwrite: bool, flag: str = "--out") -> None:
    """Refuse an `out` that `prepare` may not write: only a new or empty folder or a cache is replaced."""
    path, entries = _folder_entries(out, flag)
    if not entries:
        return
    if "manifest.json" not in entries or not set(entries) <= set(CACHE_FILES):
        raise RunError(f"{flag} {path} is a non-empty folder that is not a jaxvae cache (it holds "
                       f"{_listing(entries)}); jaxvae does not replace it, even with --overwrite: "
                       "choose a new or empty folder")
    if not overwrite:
        raise RunError(f"{flag} {path} already holds a prepared cache: choose another --out or pass --overwrite")


def run_containing(path: Path) -> Path | None:
    """The run folder that `path` lies in (or is), if any."""
    path = path.resolve()
    for folder in (path, *path.parents):
        if (folder / CONFIG).is_file() and (folder / META).is_file():
            return folder
    return None


def written_by_jaxvae(path: Path) -> bool:
    """Whether the file carries jaxvae's marker (so replacing it loses nothing of the user's)."""
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as img:
                return str(getattr(img, "text", {}).get("Software", "")).startswith("jaxvae")
        if path.suffix.lower() == ".json":
            obj = json.loads(path.read_text())
            return isinstance(obj, dict) and "jaxvae_version" in obj
        if path.suffix.lower() == ".npz":  # jaxvae encode's latents
            with np.load(path, allow_pickle=False) as npz:
                return {"mean", "index", "latent_scale"} <= set(npz.files)
        if path.suffix.lower() == ".safetensors":  # jaxvae export's model file
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                return "jaxvae_format" in (f.metadata() or {})
        if path.suffix.lower() in (".html", ".htm"):
            with open(path, encoding="utf-8", errors="replace") as f:
                return '<meta name="generator" content="jaxvae' in f.read(4096)
    except Exception:  # unreadable or not what its name says (each reader raises its own): the user's
        return False
    return False


def output_file(out: str | os.PathLike, default_name: str, *, flag: str = "--out", into_run: str = "never",
                suffixes: tuple[str, ...] = (".png",), overwrite: bool = True) -> Path:
    """The file an output flag names, checked before any work: refused in one line unless writable.

    `out` ending in a slash, or naming an existing folder, means `default_name` inside it.
    into_run: "never" (picture commands never write into a run), "not-run-files" (evaluate --out may
    add RUN/evaluation.json but never replace the run's own files) or "yes" (report).
    overwrite: False refuses any existing file (encode, export: data a user may want to keep); True
    replaces one that jaxvae wrote. A file jaxvae did not write is never replaced.
    """
    text = str(out)
    path = _given(out, flag)
    if text.endswith(("/", os.sep)) or path.is_dir():
        path = path / default_name
    if suffixes and path.suffix.lower() not in suffixes:
        raise RunError(f"{flag} must name a {' or '.join(suffixes)} file (or a folder), got {text!r}")
    run = run_containing(path.parent) if into_run != "yes" else None
    if run is not None and (into_run == "never" or path.parent.resolve() == run and path.name in RUN_FILES):
        raise RunError(f"{flag} {path} is inside the run {run}, whose files only train and report write: "
                       "give a path outside it")
    if path.is_dir():
        raise RunError(f"{flag} {path} is a folder: give a file name")
    if path.exists() and not overwrite:
        raise RunError(f"{flag} {path} already exists: pass --overwrite to replace it")
    if path.exists() and not written_by_jaxvae(path):
        raise RunError(f"{flag} {path} exists and was not written by jaxvae; it is not replaced: "
                       "choose another name or remove it")
    return path


def make_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
