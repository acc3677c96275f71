"""jaxvae's train step beside the chapter's code, in one run, as a ratio of images/s.

    .venv/bin/python benchmarks/train_step.py [--batch 32] [--windows 12] [--steps 2]
                                              [--cpu-devices N] [--json FILE]

The `seed` preset against ../shared/bench/seed_ref.py (the chapter's model in linen, fp32; the
path is relative to the repository root), in one process: jaxvae fp32, jaxvae bf16 and
seed_ref each run a window of `steps` steps in turn, `windows` times (see interleave.py), and
each median window gives its images/s. With --cpu-devices N the host is split into N JAX CPU
devices and jaxvae fp32 also runs data-parallel over all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BenchError, seed_ref_path  # noqa: E402


def compare(batch: int = 32, windows: int = 12, steps: int = 2, say=print) -> dict:
    """Interleave the variants in this process; medians, spreads and ratios to seed_ref."""
    import jax
    import numpy as np
    from interleave import interleave, jaxvae_step, seed_ref_step

    one = jax.devices()[:1]
    variants = {"seed_ref fp32": seed_ref_step(batch),
                "jaxvae fp32": jaxvae_step("seed", batch, "fp32", one),
                "jaxvae bf16": jaxvae_step("seed", batch, "bf16", one)}
    if len(jax.devices()) > 1:
        variants[f"jaxvae fp32, {len(jax.devices())} devices"] = jaxvae_step("seed", batch, "fp32")
    times = interleave(variants, windows, steps, say=say)
    rows = {}
    for name, t in times.items():
        q1, median, q3 = np.percentile(t, [25, 50, 75])
        rows[name] = {"images_per_s": batch / median, "step_ms": 1000 * median,
                      "step_ms_quartiles": [1000 * q1, 1000 * q3], "windows_ms": [1000 * x for x in t]}
    ref = rows["seed_ref fp32"]["images_per_s"]
    for row in rows.values():
        row["ratio_to_seed_ref"] = row["images_per_s"] / ref
    device = jax.devices()[0]
    return {"preset": "seed", "batch": batch, "windows": windows, "steps_per_window": steps,
            "platform": device.platform, "device_kind": device.device_kind, "devices": len(jax.devices()),
            "variants": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--windows", type=int, default=12, help="timed windows per variant, taken in turn")
    p.add_argument("--steps", type=int, default=2, help="train steps per window")
    p.add_argument("--cpu-devices", type=int, default=1, help="split a CPU host into this many JAX devices")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    if a.cpu_devices > 1:
        os.environ["JAX_NUM_CPU_DEVICES"] = str(a.cpu_devices)  # before JAX starts its CPU backend
    try:
        seed_ref_path()
        print(f"seed preset, batch {a.batch}: {a.windows} windows of {a.steps} steps per variant, in turn",
              flush=True)
        result = compare(a.batch, a.windows, a.steps)
    except BenchError as e:
        print(f"train_step.py: error: {e}", file=sys.stderr)
        return 2
    print(f"{'variant':28} {'img/s':>7} {'ms/step':>8} {'quartiles ms':>15} {'vs seed_ref':>11}")
    for name, r in result["variants"].items():
        q1, q3 = r["step_ms_quartiles"]
        print(f"{name:28} {r['images_per_s']:7.2f} {r['step_ms']:8.1f} {q1:7.0f}-{q3:<7.0f} "
              f"{r['ratio_to_seed_ref']:10.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
