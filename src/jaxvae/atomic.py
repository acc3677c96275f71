"""Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one.

    with atomic_path(out) as tmp:      # tmp = OUT.tmp beside it, in the same folder (one file system)
        write_something(tmp)           # on success tmp is renamed onto out; on any error it is removed

Writers that name their format by the file's suffix must be told it (the temporary name ends in .tmp,
which outputs.py also recognises as jaxvae's own leftover).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + SUFFIX)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
