"""Parallel decoding for `prepare`: worker processes that write straight into the cache's memmap.

Why not multiprocessing: its spawn and forkserver start methods re-import the caller's __main__
in every worker (for `jaxvae` that means importing JAX and Flax, seconds per worker, and any
unguarded script runs again), and fork is unsafe once JAX or grain threads exist. So each worker
is a fresh `python -c "...decode_worker.main(JOBS.json)"` that imports only numpy and PIL, reads
its share of (row, path) jobs from a JSON file, writes pixels into the shared images.npy, and
prints one JSON line [row, upscaled, reason] per file. Only paths and these lines cross process
boundaries; nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator

import numpy as np

from jaxvae.data.images import ImageSettings, decode_image

Result = tuple[int, bool, str | None]  # (row, upscaled, reason or None)
# (not `python -m jaxvae.data.decode_worker`: the package imports this module first, and runpy warns)
_WORKER = "import sys; from jaxvae.data.decode_worker import main; main(sys.argv[1])"


def decode_in_process(npy: str, paths: list[str], s: ImageSettings) -> Iterator[Result]:
    images = np.load(npy, mmap_mode="r+")
    for row, path in enumerate(paths):
        pixels, upscaled, reason = decode_image(path, s)
        if pixels is not None:
            images[row] = pixels
        yield row, upscaled, reason
    images.flush()


def _read_lines(stream, out: queue.Queue) -> None:
    try:
        for line in stream:
            out.put(json.loads(line))
    except (OSError, ValueError):  # the stream was closed under us: the parent is stopping early
        pass
    out.put(None)  # this worker is done


def decode_in_workers(npy: str, paths: list[str], s: ImageSettings, workers: int) -> Iterator[Result]:
    """Decode paths[row] into row of the (N, S, S, C) memmap at `npy`, in `workers` processes.

    Yields results in completion order. A worker that dies leaves its unfinished rows to be decoded
    here, with a one-line warning; closing the iterator early kills the workers.
    """
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                                      os.environ.get("PYTHONPATH")]))}
    results: queue.Queue = queue.Queue()
    procs, done = [], set()
    tmp = tempfile.mkdtemp(prefix="jaxvae-jobs-")
    try:
        for w in range(workers):
            jobs = os.path.join(tmp, f"jobs-{w}.json")
            with open(jobs, "w") as f:  # rows w, w + workers, ...: interleaved, so shares balance
                json.dump({"npy": npy, "settings": dataclasses.asdict(s),
                           "jobs": [[r, paths[r]] for r in range(w, len(paths), workers)]}, f)
            proc = subprocess.Popen([sys.executable, "-c", _WORKER, jobs],
                                    stdout=subprocess.PIPE, env=env, text=True)
            procs.append(proc)
            threading.Thread(target=_read_lines, args=(proc.stdout, results), daemon=True).start()
        finished = 0
        while finished < workers:
            item = results.get()
            if item is None:
                finished += 1
                continue
            done.add(item[0])
            yield item[0], bool(item[1]), item[2]
        if len(done) < len(paths):
            codes = [p.wait() for p in procs]
            print(f"jaxvae: a decoding worker failed (exit codes {codes}); decoding its remaining "
                  f"{len(paths) - len(done)} images in this process", file=sys.stderr)
            images = np.load(npy, mmap_mode="r+")
            for row in sorted(set(range(len(paths))) - done):
                pixels, upscaled, reason = decode_image(paths[row], s)
                if pixels is not None:
                    images[row] = pixels
                yield row, upscaled, reason
            images.flush()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(jobs_file: str) -> None:
    with open(jobs_file) as f:
        spec = json.load(f)
    s = ImageSettings(**spec["settings"])
    images = np.load(spec["npy"], mmap_mode="r+")
    for row, path in spec["jobs"]:
        pixels, upscaled, reason = decode_image(path, s)
        if pixels is not None:
            images[row] = pixels
        print(json.dumps([row, upscaled, reason]), flush=True)
    images.flush()
