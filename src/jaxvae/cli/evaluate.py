"""`jaxvae evaluate RUN`: the table of evaluation.evaluate on a split of the run's data or on --data."""

from __future__ import annotations

import dataclasses
import sys

from jaxvae.cli.common import Run, parse
from jaxvae.config import EVALUATE_MEMORY_CAP_MB, ConfigError


@dataclasses.dataclass(frozen=True)
class EvaluateArgs:
    """Evaluate a trained run: -ELBO and its terms, the IWAE bound on log p(x), bits/dim, MSE / PSNR /
    SSIM, active units, KL per latent dim and I_q(x; z). Prints a table; never writes into RUN
    (JSON only with --out, the KL chart only with --kl-plot or beside --out)."""

    run: Run
    """Run directory."""
    data: str = ""
    """Evaluate every example of this data (any --data source) instead of a split of the run's own data."""
    split: str = "val"
    """Split of the run's own data when --data is not given: val | train."""
    iw_samples: int = 100
    """K, importance samples per example for the IWAE bound (1 gives the ELBO)."""
    limit: int = 0
    """Evaluate only the first N examples (0: all)."""
    seed: int = 0
    """Seed of every draw (posterior samples, dequantization noise)."""
    memory_cap_mb: float = EVALUATE_MEMORY_CAP_MB
    """Upper bound on the estimated activations of one device call, in MiB."""
    out: str = ""
    """Write the result as JSON here (and the KL chart beside it as <name>_kl.png)."""
    kl_plot: str = ""
    """Write the bar chart of the KL per latent dim to this PNG."""
    checkpoint: str = "best"
    """Which checkpoint: best (by validation loss) | latest | a step number."""
    disentanglement: bool = False
    """Also score disentanglement (beta-VAE, FactorVAE, MIG, SAP, DCI) of the posterior mean, on data with
    known factors: dsprites, shapes, or an .npz with a `factors` array."""
    disentanglement_train: int = 10000
    """Training samples (points) of each disentanglement metric: disentanglement_lib's 10000; fewer is faster
    and noisier."""
    disentanglement_test: int = 5000
    """Held-out samples (points) of each disentanglement metric: disentanglement_lib's 5000."""
    disentanglement_batch: int = 64
    """Observations behind each beta-VAE and FactorVAE point: disentanglement_lib's 64."""
    yes: bool = False
    """Run even when the estimated time (N examples x K decodes at a measured rate) is over an hour."""


def evaluation_data(vae, a: EvaluateArgs):
    """The examples a command asks for: uint8 images or standardized float32 vectors."""
    from jaxvae import data as data_lib
    from jaxvae.data import vectors

    c = vae.config
    if a.split not in ("val", "train"):
        raise ConfigError(f"unknown split {a.split!r}: choose val or train")
    if a.data and a.split == "train":
        raise ConfigError("--split picks from the run's own data; with --data every example of it is evaluated")
    if a.data and c.vector_data:  # new vectors, standardized as the training data was
        values, _ = vectors.read_vectors(a.data)
        if values.shape[1] != c.data_dim:
            raise ConfigError(f"--data {a.data} has D = {values.shape[1]} columns but the run was trained on "
                              f"D = {c.data_dim}")
        x = data_lib.load_dataset(c).transform(values)
    elif a.data:
        x = data_lib.load_dataset(c.replace(data=a.data, val_fraction=0.0)).train
    else:
        ds = data_lib.load_dataset(c)
        x = ds.val if a.split == "val" else ds.train
    if len(x) == 0:
        raise ConfigError(f"the {a.split} split of {c.data} is empty")
    return x[: a.limit] if a.limit else x



def run(argv: list[str]) -> int:
    a = parse(EvaluateArgs, argv, prog="evaluate")
    from jaxvae import evaluation
    from jaxvae import run as run_lib
    from jaxvae.api import load as load_run
    from jaxvae.latents import plot_kl_per_dim
    from jaxvae.outputs import make_parent, output_file

    if a.limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {a.limit}")
    for flag in ("disentanglement_train", "disentanglement_test", "disentanglement_batch"):
        if getattr(a, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(a, flag)}")
    # the outputs are checked before any work: RUN/evaluation.json may be added, no run file replaced
    out = output_file(a.out, "evaluation.json", into_run="not-run-files", suffixes=(".json",)) if a.out else None
    kl_plot = (output_file(a.kl_plot, "kl_per_dim.png", flag="--kl-plot", into_run="not-run-files") if a.kl_plot
               else output_file(str(out.with_suffix("")) + "_kl.png", "", into_run="not-run-files") if out else None)
    truth = None
    if a.disentanglement:  # data without factors is refused before any work
        truth = evaluation.disentanglement_ground_truth(run_lib.open_run(a.run)[1], a.data)
    vae = load_run(a.run, checkpoint=a.checkpoint)  # only reads the run
    x = evaluation_data(vae, a)
    if a.iw_samples < 1:  # before the estimate, worded as evaluate() words it
        raise ConfigError(f"iw_samples must be a positive integer, got {a.iw_samples}")
    decodes, seconds = evaluation.estimate_seconds(vae, x, a.iw_samples, memory_cap_mb=a.memory_cap_mb)
    if seconds > evaluation.MAX_SECONDS and not a.yes:
        raise ConfigError(f"this evaluation is {len(x):,} examples x {a.iw_samples:,} samples = {decodes:.3g} decodes, "
                          f"about {_duration(seconds)} at the rate just measured: pass --yes to run it, or lower "
                          "--iw-samples or --limit")
    if seconds > evaluation.PROGRESS_EVERY_S:
        print(f"jaxvae evaluate: {decodes:.3g} decodes, about {_duration(seconds)}", file=sys.stderr, flush=True)
    result = evaluation.evaluate(vae, x, iw_samples=a.iw_samples, seed=a.seed, memory_cap_mb=a.memory_cap_mb,
                                 progress=True)
    result.update(run=str(a.run), data=a.data or vae.config.data, split="all" if a.data else a.split,
                  checkpoint=f"{vae.checkpoint_step} ({vae.checkpoint_note})", checkpoint_step=vae.checkpoint_step)
    if truth is not None:
        result.update(evaluation.disentanglement_scores(
            vae, truth, seed=a.seed, num_train=a.disentanglement_train, num_test=a.disentanglement_test,
            batch_size=a.disentanglement_batch))
    for path in (out, kl_plot):
        if path:
            make_parent(path)
    if kl_plot:
        plot_kl_per_dim(result, kl_plot)
        result["kl_plot"] = str(kl_plot)
    if out:
        run_lib.write_json(out, {**result, "jaxvae_version": run_lib.VERSION})  # the marker of a jaxvae file
    print(evaluation.format_table(result, title=f"jaxvae evaluate {a.run} ({result['split']} of {result['data']})"))
    if out:
        print(f"wrote {out}" + (f" and {kl_plot}" if kl_plot else ""))
    elif kl_plot:
        print(f"wrote {kl_plot}")
    return 0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


