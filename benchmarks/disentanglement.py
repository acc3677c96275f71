"""Disentanglement of beta-VAEs on dsprites: train at beta = 1, 4, 16 (and any extra runs), then
`jaxvae evaluate --disentanglement`, and print a markdown table of the five scores.

    .venv/bin/python benchmarks/disentanglement.py [--steps 3000] [--betas 1 4 16]
        [--extra "btcvae=--objective btcvae --tc-weight 6"] [--num-train 10000 --num-test 5000]

Each run is `jaxvae train --data dsprites --channels 1 --likelihood bernoulli` on the backbone given
by --backbone (default: the tiny preset's conv ResNet with two levels, widths 32/64, at 64 px with a
4 x 4 patch stem, z 10 as in Locatello et al.), in its own process, then evaluated in another.
--extra NAME=FLAGS adds a run with those train flags on top of the common ones (e.g. an objective that
does not exist yet on this branch). Results go to --json; runs to --out-dir (reused with --reuse).

Locatello et al. (2019) report their scores on dSprites only as distributions (violin plots over 50
seeds x 6 hyper-parameters per method, Fig. 13 of the ICML version), not as numbers; the table sets
ours beside chance and beside what the true factors score (the README's "perfect code" figures).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

KEYS = ("betavae_score", "factorvae_score", "mig", "sap", "dci_disentanglement", "dci_completeness",
        "dci_informativeness")
HEADERS = ("beta-VAE", "FactorVAE", "MIG", "SAP", "DCI D", "DCI C", "DCI I")
BACKBONE = ("--preset tiny --decoder-head dense --image-size 64 --patch-size 4 --channel-mults 1,2 --z-dim 10 "
            "--batch-size 64 --lr 1e-3 --lr-schedule constant --adam-b2 0.999 "
            "--log-every 100 --eval-every 1000 --ckpt-every 1000")
# Per key: (chance, what a code equal to the true factors scores on dsprites), measured (README).
BOUNDS = {"betavae_score": ("0.20", "1.0"), "factorvae_score": ("0.20", "1.0"), "mig": ("0", "0.90"),
          "sap": ("0", "0.23"), "dci_disentanglement": ("0", "1.0"), "dci_completeness": ("0", "1.0"),
          "dci_informativeness": ("1/classes", "1.0")}


def run(cmd: list[str]) -> float:
    """Run a jaxvae command in its own process; return its wall time in seconds."""
    t = time.perf_counter()
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--betas", type=float, nargs="*", default=[1.0, 4.0, 16.0])
    p.add_argument("--extra", action="append", default=[], metavar="NAME=FLAGS",
                   help="another run: its name and its train flags (on top of the common ones)")
    p.add_argument("--backbone", default=BACKBONE, help="train flags shared by every run")
    p.add_argument("--num-train", type=int, default=10000, help="--disentanglement-train")
    p.add_argument("--num-test", type=int, default=5000, help="--disentanglement-test")
    p.add_argument("--batch", type=int, default=64, help="--disentanglement-batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="runs/disentanglement")
    p.add_argument("--json", default="benchmarks/results/disentanglement_cpu.json")
    p.add_argument("--reuse", action="store_true", help="evaluate runs that already exist instead of training")
    a = p.parse_args()

    runs = {f"beta-VAE, beta = {b:g}": ["--beta", f"{b:g}"] for b in a.betas}
    for spec in a.extra:
        name, sep, flags = spec.partition("=")
        if not sep:
            p.error(f"--extra wants NAME=FLAGS, got {spec!r}")
        runs[name] = shlex.split(flags)

    jaxvae = [sys.executable, "-m", "jaxvae"]
    common = ["--data", "dsprites", "--channels", "1", "--likelihood", "bernoulli", "--steps", str(a.steps),
              "--seed", str(a.seed), *shlex.split(a.backbone)]
    results = []
    for i, (name, flags) in enumerate(runs.items()):
        out = Path(a.out_dir) / f"run{i}"
        train_s = None
        if not (a.reuse and (out / "summary.json").is_file()):
            train_s = run([*jaxvae, "train", *common, *flags, "--out", str(out), "--overwrite", "--quiet"])
        evaluation = out / "evaluation_disentanglement.json"
        eval_s = run([*jaxvae, "evaluate", str(out), "--limit", "256", "--iw-samples", "1", "--disentanglement",
                      "--disentanglement-train", str(a.num_train), "--disentanglement-test", str(a.num_test),
                      "--disentanglement-batch", str(a.batch), "--seed", str(a.seed), "--out", str(evaluation)])
        r = json.loads(evaluation.read_text())
        summary = json.loads((out / "summary.json").read_text())
        results.append({"name": name, "flags": flags, "run": str(out), "train_s": train_s, "eval_s": eval_s,
                        "steps": a.steps, "reconstruction_mse": summary.get("reconstruction_mse"),
                        "kl": r["kl"]["mean"], **{k: r[k] for k in KEYS},
                        "disentanglement_s": r["disentanglement"]["seconds"]})

    import jax  # only for the device name

    setup = {"device": jax.devices()[0].device_kind, "steps": a.steps, "backbone": a.backbone,
             "num_train": a.num_train, "num_test": a.num_test, "batch": a.batch, "seed": a.seed}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"setup": setup, "results": results}, indent=2) + "\n")

    print(f"\ndsprites, {a.steps} steps, one seed ({a.seed}); scores of {a.num_train} + {a.num_test} samples, "
          f"groups of {a.batch}; {setup['device']}\n")
    print("| run | train (s) | KL (nats) | " + " | ".join(HEADERS) + " |")
    print("|---|---|---|" + "---|" * len(HEADERS))
    for r in results:
        train = f"{r['train_s']:.0f}" if r["train_s"] is not None else "reused"
        print(f"| {r['name']} | {train} | {r['kl']:.1f} | " + " | ".join(f"{r[k]:.3f}" for k in KEYS) + " |")
    print("| chance / the true factors | | | " + " | ".join(f"{BOUNDS[k][0]} / {BOUNDS[k][1]}" for k in KEYS) + " |")
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
