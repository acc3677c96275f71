"""`make bench`: train-step speed of the `tiny` and `seed` presets beside the chapter's code.

    .venv/bin/python benchmarks/run_all.py [--rounds 3] [--steps 4] [--out benchmarks/results]

Writes benchmarks/results/<device kind>.json and prints a table: images/s, ms/step, compile
seconds, GFLOP per step (XLA's cost analysis), MFU (over harness.PEAK_TFLOPS, or the CPU estimate
of harness.cpu_peak_tflops), peak host RSS and peak device memory where the device reports it.

The seed preset at batch 32 is measured in `rounds` alternating rounds with the chapter's
seed_ref.py (fp32), and its row is the median; the ratio to seed_ref is of the same rounds.
Everything else is one measurement (the median of 3 timing windows). About 8 minutes on the
2-core CPU it was written on; on a GPU the batch sizes grow to fill it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BenchError, cpu_info, measure_ours, measure_ref, peak_tflops, seed_ref_path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# Measured in alternating rounds with seed_ref: (precision, devices) of the seed preset at batch 32.
# Two CPU devices: the same host split in two, the batch data-parallel over them (JAX_NUM_CPU_DEVICES).
ROUNDS = [("fp32", 1), ("bf16", 1), ("fp32", 2)]
# (preset, batch, precision) measured once each, beyond the rounds.
CPU_MATRIX = [("tiny", 32, "fp32"), ("tiny", 128, "fp32"), ("seed", 16, "fp32"), ("seed", 64, "fp32"),
              ("seed", 64, "bf16")]
ACCELERATOR_MATRIX = [("tiny", 128, "fp32"), ("tiny", 128, "bf16"), ("seed", 64, "fp32"), ("seed", 64, "bf16"),
                      ("seed", 256, "bf16"), ("seed", 1024, "bf16")]


def with_mfu(row: dict) -> dict:
    peak = peak_tflops(row["device_kind"], row["platform"], row["precision"])
    achieved = row["flops_per_step"] / (row["step_ms"] / 1000) / 1e12  # TFLOP/s
    return {**row, "achieved_tflops": achieved, "peak_tflops": peak, "mfu": achieved / peak if peak else None}


def median_row(rows: list[dict]) -> dict:
    """The round with the median images/s (a real measurement, not a blend of several)."""
    order = np.argsort([r["images_per_s"] for r in rows])
    return {**rows[order[len(rows) // 2]], "rounds": len(rows)}


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    head = (f"{'preset':6} {'batch':>5} {'prec':4} {'dev':>3} {'img/s':>8} {'ms/step':>8} {'compile s':>9} "
            f"{'GFLOP/step':>10} {'TFLOP/s':>7} {'MFU':>6} {'RSS MB':>7} {'dev MB':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['preset']:6} {r['batch']:5d} {r['precision']:4} {r['devices']:3d} "
                     f"{r['images_per_s']:8.1f} {r['step_ms']:8.1f} {r['compile_s']:9.1f} "
                     f"{r['flops_per_step'] / 1e9:10.1f} {r['achieved_tflops']:7.3f} "
                     f"{fmt(r['mfu'] and 100 * r['mfu'], '5.1f') + '%':>6} {r['peak_rss_mb']:7.0f} "
                     f"{fmt(r['device_peak_mb'], '7.0f')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of seed/32 against seed_ref")
    p.add_argument("--steps", type=int, default=4, help="timed steps per window (3 windows per run)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    say = lambda *x: print(*x, flush=True)  # noqa: E731
    try:
        seed_ref_path()
        rounds = {variant: [] for variant in ROUNDS}
        ref = []
        say(f"seed preset, batch 32: jaxvae {', '.join(f'{p} on {d} device(s)' for p, d in ROUNDS)} and "
            f"seed_ref (fp32), {a.rounds} alternating rounds")
        for r in range(a.rounds):
            for precision, devices in list(rounds):
                rounds[(precision, devices)].append(measure_ours("seed", 32, precision, a.steps, devices=devices))
                if rounds[(precision, devices)][-1]["platform"] != "cpu":
                    rounds.pop(("fp32", 2), None)  # several devices per host is a CPU-only experiment
            ref.append(measure_ref(32, steps=2 * a.steps))
            say(f"  round {r + 1}: jaxvae " + "  ".join(
                f"{p}/{d}dev {runs[-1]['images_per_s']:6.2f}" for (p, d), runs in rounds.items()) +
                f"  seed_ref {ref[-1]['images_per_s']:6.2f} img/s")
        platform = rounds[ROUNDS[0]][0]["platform"]
        matrix = CPU_MATRIX if platform == "cpu" else ACCELERATOR_MATRIX
        rows = [with_mfu(median_row(runs)) for runs in rounds.values()]
        for preset, batch, precision in matrix:
            say(f"  {preset} batch {batch} {precision}")
            rows.append(with_mfu(measure_ours(preset, batch, precision, steps=a.steps)))
    except BenchError as e:
        print(f"run_all.py: error: {e}", file=sys.stderr)
        return 2

    ref_ips = float(np.median([r["images_per_s"] for r in ref]))
    ratios = {f"{p} {d} device(s)": float(np.median([o["images_per_s"] for o in runs])) / ref_ips
              for (p, d), runs in rounds.items()}
    kind = rows[0]["device_kind"]
    result = {
        "device_kind": kind, "platform": platform,
        "cpu": cpu_info() if platform == "cpu" else None,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "rows": rows,
        "seed_ref": {"batch": 32, "precision": "fp32", "images_per_s": ref_ips, "runs": ref},
        "ratio_to_seed_ref": ratios,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / (re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") + ".json")
    path.write_text(json.dumps(result, indent=2) + "\n")

    info = result["cpu"]
    where = (f"{info['model']}, {info['cores']} cores @ {info['ghz']:.2f} GHz" if info else kind)
    say(f"\n{platform} ({where}); peak fp32 {fmt(peak_tflops(kind, platform, 'fp32'), '.3f')}, "
        f"bf16 {fmt(peak_tflops(kind, platform, 'bf16'), '.3f')} TFLOP/s")
    say(table(rows))
    say(f"seed_ref (the chapter's code), seed preset, batch 32, fp32: {ref_ips:.2f} img/s "
        f"(median of {len(ref)}); jaxvae " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
