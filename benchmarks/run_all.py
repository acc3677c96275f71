"""`make bench`: train-step speed of the `tiny` and `seed` presets beside the chapter's code.

    .venv/bin/python benchmarks/run_all.py [--steps 4] [--windows 12] [--out benchmarks/results]

Writes benchmarks/results/<device kind>.json and prints a table: images/s, ms/step, compile
seconds, GFLOP per step (XLA's cost analysis), MFU (over harness.PEAK_TFLOPS, or the CPU estimate
of harness.cpu_peak_tflops), peak host RSS and peak device memory where the device reports it.
Each row is its own process (the median of 3 timing windows). Then train_step.py compares the
seed preset at batch 32 with the chapter's seed_ref.py in one process, in alternating windows
(on a CPU split into 2 JAX devices, so that jaxvae also runs data-parallel over them). Last,
encode.py measures `jaxvae encode`'s images/s on the tiny preset.
About 7 minutes on the 2-core CPU it was written on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BenchError, cpu_info, measure_ours, peak_tflops, seed_ref_path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# (preset, batch, precision), each measured in its own process.
CPU_MATRIX = [("seed", 32, "fp32"), ("seed", 32, "bf16"), ("seed", 16, "fp32"), ("seed", 64, "fp32"),
              ("seed", 64, "bf16"), ("tiny", 32, "fp32"), ("tiny", 128, "fp32"), ("tiny-transformer", 32, "fp32")]
ACCELERATOR_MATRIX = [("seed", 32, "fp32"), ("seed", 32, "bf16"), ("seed", 64, "fp32"), ("seed", 64, "bf16"),
                      ("seed", 256, "bf16"), ("seed", 1024, "bf16"), ("tiny", 128, "fp32"), ("tiny", 128, "bf16")]


def with_mfu(row: dict) -> dict:
    peak = peak_tflops(row["device_kind"], row["platform"], row["precision"])
    achieved = row["flops_per_step"] / (row["step_ms"] / 1000) / 1e12  # TFLOP/s
    return {**row, "achieved_tflops": achieved, "peak_tflops": peak, "mfu": achieved / peak if peak else None}


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    head = (f"{'preset':16} {'batch':>5} {'prec':4} {'dev':>3} {'img/s':>8} {'ms/step':>8} {'compile s':>9} "
            f"{'CPU s/step':>10} {'GFLOP/step':>10} {'TFLOP/s':>7} {'MFU':>6} {'RSS MB':>7} {'dev MB':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['preset']:16} {r['batch']:5d} {r['precision']:4} {r['devices']:3d} "
                     f"{r['images_per_s']:8.1f} {r['step_ms']:8.1f} {r['compile_s']:9.1f} "
                     f"{r['cpu_s_per_step']:10.2f} {r['flops_per_step'] / 1e9:10.1f} {r['achieved_tflops']:7.3f} "
                     f"{fmt(r['mfu'] and 100 * r['mfu'], '5.1f') + '%':>6} {r['peak_rss_mb']:7.0f} "
                     f"{fmt(r['device_peak_mb'], '7.0f')}")
    return "\n".join(lines)


def measure_encode() -> dict:
    """benchmarks/encode.py in its own process: `jaxvae encode`'s images/s on the tiny preset."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(Path(__file__).with_name("encode.py")), "--json", f"{tmp}/encode.json"]
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode:
            raise BenchError("encode.py failed")
        return json.loads(Path(f"{tmp}/encode.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="timed steps per window (3 windows per row)")
    p.add_argument("--windows", type=int, default=12, help="alternating windows per variant against seed_ref")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    say = lambda *x: print(*x, flush=True)  # noqa: E731
    try:
        seed_ref_path()
        rows, matrix = [], CPU_MATRIX
        while len(rows) < len(matrix):
            preset, batch, precision = matrix[len(rows)]
            say(f"  {preset} batch {batch} {precision}")
            rows.append(with_mfu(measure_ours(preset, batch, precision, steps=a.steps)))
            matrix = CPU_MATRIX if rows[0]["platform"] == "cpu" else ACCELERATOR_MATRIX
        platform, kind = rows[0]["platform"], rows[0]["device_kind"]
        say("  seed batch 32 against seed_ref, alternating windows in one process")
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, str(Path(__file__).with_name("train_step.py")), "--windows", str(a.windows),
                   "--cpu-devices", "2" if platform == "cpu" else "1", "--json", f"{tmp}/compare.json"]
            if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode:
                raise BenchError("train_step.py failed")
            comparison = json.loads(Path(f"{tmp}/compare.json").read_text())
        say("  encode throughput, tiny preset")
        encode = measure_encode()
    except BenchError as e:
        print(f"run_all.py: error: {e}", file=sys.stderr)
        return 2

    result = {
        "device_kind": kind, "platform": platform,
        "cpu": cpu_info() if platform == "cpu" else None,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "rows": rows,
        "seed_ref_comparison": comparison,
        "encode": encode,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / (re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") + ".json")
    path.write_text(json.dumps(result, indent=2) + "\n")

    info = result["cpu"]
    where = (f"{info['model']}, {info['cores']} cores @ {info['ghz']:.2f} GHz" if info else kind)
    say(f"\n{platform} ({where}); peak fp32 {fmt(peak_tflops(kind, platform, 'fp32'), '.3f')}, "
        f"bf16 {fmt(peak_tflops(kind, platform, 'bf16'), '.3f')} TFLOP/s")
    say(table(rows))
    for r in rows:
        if r.get("reference_conv_gflops"):
            achieved = r["flops_per_step"] / (r["step_ms"] / 1000) / 1e9
            say(f"  {r['preset']} (conv) batch {r['batch']}: {achieved:.1f} GFLOP/s achieved, against this machine's "
                f"3x3-conv rate of {r['reference_conv_gflops']:.1f} GFLOP/s (32->32 channels, 32x32, batch 32, "
                f"forward and backward): {achieved / r['reference_conv_gflops']:.0%}")
    say(f"\nseed preset, batch 32, beside the chapter's seed_ref.py ({comparison['windows']} alternating windows "
        f"of {comparison['steps_per_window']} steps, medians):")
    for name, r in comparison["variants"].items():
        say(f"  {name:28} {r['images_per_s']:7.2f} img/s {r['step_ms']:8.1f} ms/step "
            f"{r['ratio_to_seed_ref']:6.2f}x seed_ref")
    say(f"\njaxvae encode, tiny preset, {encode['examples']} images at batch {encode['batch']} on "
        f"{encode['devices']} device(s): {encode['images_per_s']:.0f} images/s (median of {len(encode['seconds'])})")
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
