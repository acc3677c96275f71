"""Images per second of IWAE evaluation (jaxvae.evaluate) at K = 1000 on the `tiny` preset.

    .venv/bin/python benchmarks/evaluate.py [--k 1000] [--n 16] [--run RUN] [--memory-cap-mb 1024]

Without --run the model is the tiny preset freshly initialised: the cost of a decode does not
depend on the parameter values. The first call compiles (timed apart); the figure is the IWAE pass
over n held-out shapes images (posterior, K decodes each, the logsumexp, the reconstruction
metrics), i.e. `seconds` of evaluate(), which leaves out the dataset-level MI estimate.
"""

from __future__ import annotations

import argparse
import time

import jax

import jaxvae
from jaxvae import data as data_lib
from jaxvae.config import TINY
from jaxvae.evaluation import bytes_per_sample, evaluate
from jaxvae.model import build, count_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=1000, help="importance samples per image")
    parser.add_argument("--n", type=int, default=16, help="images timed")
    parser.add_argument("--run", default="", help="a trained run to load instead of the tiny preset")
    parser.add_argument("--memory-cap-mb", type=float, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    a = parser.parse_args()

    if a.run:
        vae = jaxvae.load(a.run)
        model, c = vae.model, vae.config
    else:
        c = TINY
        model = build(c)
    images = data_lib.load_dataset(c).val[: a.n]
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {len(jax.devices())} device(s)")
    print(f"model: {'run ' + a.run if a.run else 'tiny preset'} ({c.arch}, {count_params(model):,} parameters, "
          f"{c.image_size}x{c.image_size}x{c.channels} images, z {c.z_dim}); "
          f"~{bytes_per_sample(c) / 2**10:.0f} KiB per decode")

    t = time.perf_counter()
    warm = evaluate(model, images[:1], a.k, config=c, memory_cap_mb=a.memory_cap_mb)
    print(f"compile + first image: {time.perf_counter() - t:.1f} s; plan {warm['plan']}")
    rates = []
    for i in range(a.repeats):
        r = evaluate(model, images, a.k, config=c, memory_cap_mb=a.memory_cap_mb, seed=i)
        rates.append(r["examples_per_s"])
        print(f"  repeat {i}: {len(images)} images in {r['seconds']:.2f} s = {r['examples_per_s']:.2f} images/s "
              f"({r['examples_per_s'] * a.k:,.0f} decodes/s); plan {r['plan']}; "
              f"IWAE_{a.k} {r['iwae']['mean']:.1f} nats")
    print(f"IWAE evaluation at K = {a.k}: {max(rates):.2f} images/s (best of {a.repeats})")


if __name__ == "__main__":
    main()
