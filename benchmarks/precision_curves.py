"""Does bf16 change the `seed` preset's loss curve? fp32 and bf16 on one seed, fp32 on another.

    .venv/bin/python benchmarks/precision_curves.py [--steps 240] [--batch 32] [--work DIR]

Trains (or reuses, if already in --work) three short seed-preset runs on the shapes data: fp32
seed 0, bf16 seed 0 and fp32 seed 1. The fp32 seed 0 / seed 1 gap is the run-to-run noise
(another init, data order and noise); bf16 is unchanged "within noise" when its gap to fp32 on
the same seed is well inside that. Writes benchmarks/results/precision_curves.png and .json.
About 3 x 240 steps of the seed preset: half an hour on a shared 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = (("fp32", 0), ("bf16", 0), ("fp32", 1))


def train(work: Path, precision: str, seed: int, steps: int, batch: int) -> Path:
    out = work / f"{precision}-s{seed}"
    if (out / "summary.json").is_file():
        return out
    subprocess.run([str(Path(sys.executable).parent / "jaxvae"), "train", "--preset", "seed", "--steps", str(steps),
                    "--batch-size", str(batch), "--log-every", "20", "--eval-every", str(max(1, steps // 4)),
                    "--ckpt-every", str(steps), "--precision", precision, "--seed", str(seed),
                    "--out", str(out), "--overwrite", "--quiet"], check=True)
    return out


def curve(run: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if key in r]
    return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--work", type=Path, default=Path("runs/precision_curves"))
    a = p.parse_args(argv)
    runs = {f"{prec} seed {seed}": train(a.work, prec, seed, a.steps, a.batch) for prec, seed in RUNS}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    summary = {}
    for ax, key in zip(axes, ("loss", "val_loss"), strict=True):
        curves = {name: curve(run, key) for name, run in runs.items()}
        for (name, (steps, values)), style in zip(curves.items(), ("-", "--", ":"), strict=True):
            ax.plot(steps, values, style, label=name)
        ax.set(title=f"seed preset, batch {a.batch}: {key}", xlabel="step", ylabel="nats per image")
        ax.legend()
        ref, bf16, other = (curves[n][1] for n in runs)
        summary[key] = {
            "mean_abs_rel_gap_bf16_vs_fp32_same_seed": float(np.mean(np.abs(bf16 - ref) / np.abs(ref))),
            "mean_abs_rel_gap_fp32_seed1_vs_seed0": float(np.mean(np.abs(other - ref) / np.abs(ref))),
            "final": {name: float(values[-1]) for name, (_, values) in curves.items()},
        }
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "precision_curves.png", dpi=110)
    (RESULTS / "precision_curves.json").write_text(json.dumps(
        {"steps": a.steps, "batch": a.batch, "runs": {n: str(r) for n, r in runs.items()}, **summary}, indent=2) + "\n")
    for key, s in summary.items():
        print(f"{key}: bf16 vs fp32 (same seed) {100 * s['mean_abs_rel_gap_bf16_vs_fp32_same_seed']:.3f}% mean gap; "
              f"fp32 seed 1 vs seed 0 {100 * s['mean_abs_rel_gap_fp32_seed1_vs_seed0']:.3f}%; final {s['final']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
