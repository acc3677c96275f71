"""Train the `tiny-transformer` preset (the README's table was measured on it) once per posterior scale
parameterization and print a table.

The README's answer to "why a log-variance?" quotes this script's output. Each run is a normal
jaxvae run under --out-root; the table reads their summary.json and metrics.jsonl.

usage: python scripts/compare_parameterizations.py [--steps N] [--seed K] [--out-root DIR]
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

PARAMETERIZATIONS = ("log_var", "log_std", "softplus")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    ap.add_argument("--out-root", default="runs/parameterizations")
    ap.add_argument("--which", default="posterior", choices=["posterior", "decoder"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rows = []
    for p in PARAMETERIZATIONS:
        out = Path(a.out_root) / f"{a.which}_{p}_seed{a.seed}"
        cmd = [sys.executable, "-m", "jaxvae", "train", "--preset", "tiny-transformer", f"--{a.which}-scale", p,
               "--seed", str(a.seed), "--out", str(out), "--overwrite", "--quiet"]
        if a.steps:
            cmd += ["--steps", str(a.steps)]
        subprocess.run(cmd, check=True)
        s = json.loads((out / "summary.json").read_text())
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        finite = all(math.isfinite(r["loss"]) for r in records)
        max_grad = max(r["grad_norm"] for r in records)
        rows.append((p, s["val_loss"], s["kl_loss"], s["z_std"], s["reconstruction_mse"], max_grad, finite))
    print(f"| {a.which} scale | val -ELBO (nats) | KL (nats) | mean z sigma | recon MSE | max grad norm | all finite |")
    print("|---|---|---|---|---|---|---|")
    for p, val, kl, zs, mse, g, fin in rows:
        print(f"| {p} | {val:.1f} | {kl:.1f} | {zs:.3f} | {mse:.4f} | {g:.0f} | {'yes' if fin else 'no'} |")


if __name__ == "__main__":
    main()
