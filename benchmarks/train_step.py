"""jaxvae's train step beside the chapter's code, in one run, as a ratio of images/s.

    .venv/bin/python benchmarks/train_step.py [--preset seed] [--batch 32] [--precision fp32]
                                              [--rounds 5] [--steps 6] [--devices 1] [--json FILE]

The chapter's model in linen (../shared/bench/seed_ref.py, relative to the repository root) and
jaxvae's `seed` preset are timed alternately, each in a fresh process, `rounds` times; the ratio
is of the medians. The machine may be shared: alternating puts both under the same load, and
the median drops the round someone else's job hit. The reference always runs fp32 (the
chapter's code); --precision sets jaxvae's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BenchError, measure_ours, measure_ref, seed_ref_path  # noqa: E402


def compare(preset: str, batch: int, precision: str, rounds: int, steps: int, devices: int = 1,
            say=print) -> dict:
    """Alternate jaxvae and seed_ref `rounds` times; medians and their ratio."""
    seed_ref_path()  # fail before spending minutes on our own half
    ours, ref = [], []
    for r in range(rounds):
        ours.append(measure_ours(preset, batch, precision, steps=steps, devices=devices))
        ref.append(measure_ref(batch, steps=steps * 2))
        say(f"  round {r + 1}/{rounds}: jaxvae {ours[-1]['images_per_s']:7.2f} img/s   "
            f"seed_ref {ref[-1]['images_per_s']:7.2f} img/s", flush=True)
    ours_ips = float(np.median([o["images_per_s"] for o in ours]))
    ref_ips = float(np.median([o["images_per_s"] for o in ref]))
    return {"preset": preset, "batch": batch, "precision": precision, "devices": devices, "rounds": rounds,
            "jaxvae_images_per_s": ours_ips, "seed_ref_images_per_s": ref_ips, "ratio": ours_ips / ref_ips,
            "jaxvae_runs": ours, "seed_ref_runs": ref}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="seed")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=6, help="timed steps per window (3 windows for jaxvae)")
    p.add_argument("--devices", type=int, default=1, help="simulated CPU devices for jaxvae (data-parallel)")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    try:
        print(f"{a.preset} preset, batch {a.batch}: jaxvae {a.precision} vs seed_ref fp32, "
              f"{a.rounds} alternating rounds", flush=True)
        result = compare(a.preset, a.batch, a.precision, a.rounds, a.steps, a.devices)
    except BenchError as e:
        print(f"train_step.py: error: {e}", file=sys.stderr)
        return 2
    print(f"median: jaxvae {result['jaxvae_images_per_s']:.2f} img/s, seed_ref "
          f"{result['seed_ref_images_per_s']:.2f} img/s, ratio {result['ratio']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
