"""Model quality on `shapes` at equal training compute: every backbone x likelihood.

    .venv/bin/python benchmarks/quality.py [--budget-s 200] [--iw-samples 100] [--limit 256] [--only NAME]

Each row trains the `tiny` preset with one backbone and one likelihood for --budget-s CPU-seconds
(steps = budget / the process CPU time per step measured over 30 steps after the compile; on a
quiet 2-core machine 200 CPU-seconds are about 110 s of wall time). CPU time rather than wall
time, because the machine is shared: it moves much less with other people's load. Then it evaluates the
held-out images with jaxvae.evaluate: MSE / PSNR / SSIM in [0, 1] pixels, -ELBO and the IWAE bound
(nats per image), bits/dim (valid only where the likelihood is discrete or dequantized: the
table says which), and the training img/s. Runs go to a temporary directory. Writes
benchmarks/results/quality_<machine>.json and prints a markdown table for the README; with --only, the
rows it measures replace theirs in that file and the others' figures stay.

The samples column: every `shapes` image is one flat-coloured shape on a flat background, so its best two
colours explain nearly all of its pixel variance (R^2 0.97 on the held-out images, anti-aliased edges
being the rest), while a colour mixture or a cross-fade of two shapes needs more colours. The column is
the median R^2 of the best two colours (2-means) over 96 decoded samples, from N(0, I) and from the
10-component Gaussian mixture that `make demo` fits to the training codes: how much they look like shapes
on a background (shapes.two_colour_r2). It does not see a shape's outline (a round blob scores as a
square does): look at the pictures too.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import jaxvae
from jaxvae import data as data_lib
from jaxvae import parallel, samplers
from jaxvae.config import TINY, TINY_TRANSFORMER
from jaxvae.data import shapes
from jaxvae.step import init_state, make_train_step
from jaxvae.train import train

RESULTS = Path(__file__).resolve().parent / "results"

# The "conv" rows are the tiny net with the Dense head and lr 8e-3 (and the preset's Adam b2 0.99, with which
# the README's rows were measured); the broadcast row is the `tiny` preset itself.
CONV_DENSE = TINY.replace(decoder_head="dense", lr=8e-3)

# name -> config changes on top of its base preset. bernoulli does not fit `shapes` (8-bit colour images).
ROWS = {
    "transformer, gaussian shared sigma": (TINY_TRANSFORMER, {}),
    "transformer, gaussian per-pixel sigma": (TINY_TRANSFORMER, {"decoder_scale_sharing": "per-dim"}),
    "transformer, logistic": (TINY_TRANSFORMER, {"likelihood": "logistic", "decoder_scale_sharing": "per-dim"}),
    "conv, gaussian shared sigma": (CONV_DENSE, {}),
    "conv broadcast head, gaussian shared sigma": (TINY, {}),
    "conv, gaussian per-pixel sigma": (CONV_DENSE, {"decoder_scale_sharing": "per-dim"}),
    "conv, logistic": (CONV_DENSE, {"likelihood": "logistic"}),
    "conv, logistic mixture of 5": (CONV_DENSE, {"likelihood": "logistic", "mixtures": 5}),
}


def steps_for(config, budget_s: float) -> tuple[int, float]:
    """Steps that fit the budget at this config's measured rate (30 steps after the compile), and img/s."""
    mesh = parallel.data_mesh()
    graphdef, state = init_state(config)
    state = parallel.replicate(state, mesh)
    step = make_train_step(graphdef, config)
    x = np.random.default_rng(0).uniform(-1, 1, (config.batch_size, *config.data_shape)).astype(np.float32)
    state, m = step(state, x)
    jax.block_until_ready(m)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(30):
        state, m = step(state, x)
    jax.block_until_ready(m)
    cpu_per_step, wall_per_step = (time.process_time() - c0) / 30, (time.perf_counter() - t0) / 30
    return max(config.eval_every, int(budget_s / cpu_per_step)), config.batch_size / wall_per_step


def one_row(name: str, config, budget_s: float, iw_samples: int, limit: int, root: Path) -> dict:
    steps, rate = steps_for(config, budget_s)
    config = config.replace(steps=steps, eval_every=max(1, steps // 4), ckpt_every=steps)
    out = root / re.sub(r"[^a-z0-9]+", "-", name.lower())
    summary = train(config, out, quiet=True)
    vae = jaxvae.load(out)
    dataset = data_lib.load_dataset(config)
    r = jaxvae.evaluate(vae, np.asarray(dataset.val[:limit]), iw_samples=iw_samples)
    return {"name": name, "arch": config.arch, "likelihood": config.likelihood, "steps": steps,
            "train_s": summary["wall_time_s"], "images_per_s": rate, "mse": r["mse"]["mean"],
            "psnr": r["psnr"]["mean"], "ssim": r["ssim"]["mean"], "negative_elbo": r["negative_elbo"]["mean"],
            "iwae_nll": -r["iwae"]["mean"], "bits_per_dim": r["bits_per_dim"]["mean"],
            "bits_per_dim_valid": r["bits_per_dim_valid_bound"], "active_units": r["active_units"],
            "params": int(sum(np.prod(a.shape) for a in jax.tree.leaves(vae.model))),
            **sample_scores(vae, dataset), "config": config.to_dict()}


def sample_scores(vae, dataset) -> dict:
    """The median two-colour R^2 of 96 samples from N(0, I) and from a 10-component GMM fitted to the
    training codes (samplers.fit_sampler, what `make demo` fits), and the GMM's held-out log-density."""
    fitted = samplers.fit_sampler(vae, dataset.model_input(np.asarray(dataset.train)),
                                  dataset.model_input(np.asarray(dataset.val)), components=10)
    prior, gmm = vae.sample(96, seed=1), np.asarray(vae.decode(fitted.sample(96, seed=1)).mean)
    return {"sample_two_colour_r2": float(np.median(shapes.two_colour_r2(jaxvae.to_uint8(prior)))),
            "gmm_sample_two_colour_r2": float(np.median(shapes.two_colour_r2(jaxvae.to_uint8(gmm)))),
            "gmm_heldout_loglik": fitted.heldout_loglik_sampler}


def table(rows: list[dict], iw_samples: int) -> str:
    lines = [f"| backbone, likelihood | steps | train s (wall) | img/s | MSE | PSNR dB | SSIM | -ELBO | "
             f"IWAE-{iw_samples} NLL | bits/dim | samples, two-colour R^2: N(0, I) / GMM |", "|---" * 11 + "|"]
    for r in rows:
        samples = (f"{r['sample_two_colour_r2']:.2f} / {r['gmm_sample_two_colour_r2']:.2f}"
                   if "gmm_sample_two_colour_r2" in r else "—")  # rows measured before the column
        bpd = f"{r['bits_per_dim']:.3f}" + ("" if r["bits_per_dim_valid"] else " (density, not a bound)")
        lines.append(f"| {r['name']} | {r['steps']} | {r['train_s']:.0f} | {r['images_per_s']:.0f} | "
                     f"{r['mse']:.4f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['negative_elbo']:.1f} | "
                     f"{r['iwae_nll']:.1f} | {bpd} | {samples} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=200.0, help="training CPU-seconds per row")
    p.add_argument("--iw-samples", type=int, default=100)
    p.add_argument("--limit", type=int, default=256, help="held-out images evaluated")
    p.add_argument("--only", action="append", help="row names to run (substring match); default all")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (base, changes) in ROWS.items():
            if a.only and not any(s in name for s in a.only):
                continue
            print(f"  {name}: {a.budget_s:.0f} CPU-s of training ...", flush=True)
            rows.append(one_row(name, base.replace(**changes), a.budget_s, a.iw_samples, a.limit, Path(tmp)))
            print(table(rows[-1:], a.iw_samples).splitlines()[-1], flush=True)
    machine = f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}"
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"quality_{jax.devices()[0].platform}.json"
    if a.only and path.is_file():  # re-measured rows replace theirs; the others stay, in ROWS order
        kept = {r["name"]: r for r in json.loads(path.read_text())["rows"]}
        kept.update({r["name"]: r for r in rows})
        rows = [kept[name] for name in ROWS if name in kept]
    path.write_text(json.dumps({"machine": machine, "budget_s": a.budget_s, "iw_samples": a.iw_samples,
                                "rows": rows}, indent=2) + "\n")
    print(f"\n{table(rows, a.iw_samples)}\n\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
