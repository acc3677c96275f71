"""Images per second of `jaxvae encode` (encode.encode_dataset) on the `tiny` preset.

    .venv/bin/python benchmarks/encode.py [--n 2048] [--batch 256] [--what mean] [--repeats 3] [--json FILE]

The model is the tiny preset freshly initialised (the cost of an encode does not depend on the
parameter values); the data are n shapes images as uint8, as `jaxvae encode` reads them. The timed
pass is the whole command's loop: uint8 -> float32 per batch, the transfer to the devices (sharded
over every local device), the encoder, and the fetch back. The first pass compiles (timed apart);
the figure is the median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax

from jaxvae import data as data_lib
from jaxvae.api import TrainedVAE
from jaxvae.config import TINY
from jaxvae.encode import encode_dataset
from jaxvae.model import build


def measure(n: int = 2048, batch: int = 256, what: str = "mean", repeats: int = 3) -> dict:
    c = TINY
    vae = TrainedVAE(c, build(c))
    images = data_lib.load_dataset(c).train[:n]  # (n, 32, 32, 3) uint8
    t = time.perf_counter()
    encode_dataset(vae, images[:batch], what=what, batch_size=batch, progress=False)
    compile_s = time.perf_counter() - t
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        encode_dataset(vae, images, what=what, batch_size=batch, progress=False)
        seconds.append(time.perf_counter() - t)
    median = statistics.median(seconds)
    return {"preset": "tiny", "examples": len(images), "batch": batch, "what": what,
            "devices": len(jax.local_devices()), "platform": jax.default_backend(),
            "compile_s": compile_s, "seconds": seconds, "images_per_s": len(images) / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="images encoded per timed pass")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--what", default="mean", choices=("mean", "sample", "both"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = parser.parse_args()
    r = measure(a.n, a.batch, a.what, a.repeats)
    if a.json:
        a.json.write_text(json.dumps(r, indent=2) + "\n")
    print(f"encode, tiny preset, {r['examples']} images at batch {r['batch']} on {r['devices']} {r['platform']} "
          f"device(s): {r['images_per_s']:.0f} images/s (median of {len(r['seconds'])}; compile + first batch "
          f"{r['compile_s']:.1f} s)")


if __name__ == "__main__":
    main()
