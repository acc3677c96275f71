"""`jaxvae train`: every field of the Config is a flag; --preset picks their defaults."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import tyro

from jaxvae.cli.common import flag, parse
from jaxvae.config import Config, expand_decoder_std, preset


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """Train a VAE. `--preset` picks the defaults (seed: the chapter's; tiny: a CPU demo); every
    other flag overrides one field of the preset. Writes config.json, metrics.jsonl, checkpoints/,
    summary.json and the chapter's pictures into --out."""

    config: Annotated[Config, tyro.conf.arg(name="")]
    preset: str = "seed"
    """Named defaults: seed (the chapter's) | tiny (the conv CPU demo) | tiny-transformer | mnist (binarized
    MNIST from data/mnist: an MLP VAE with a VampPrior, Bernoulli, dynamic binarization)."""
    out: str = "runs/default"
    """Run directory to create."""
    overwrite: bool = False
    """Replace a run that already exists in --out (only its files; never a folder that is not a run)."""
    resume: str | None = None
    """Continue this run from its latest checkpoint (instead of --out); its config is the default."""
    quiet: bool = False
    """No progress bar or log lines."""
    tensorboard: bool = False
    """Also write TensorBoard event files to OUT/tensorboard (needs the tensorboardX extra)."""
    coordinator: str = ""
    """Multi-host: HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS); empty for one process."""
    num_processes: int = 0
    """Multi-host: number of processes (or JAX_NUM_PROCESSES)."""
    process_id: int = -1
    """Multi-host: this process's index, 0 first (or JAX_PROCESS_ID)."""


def run(argv: list[str]) -> int:
    name, resume = flag(argv, "--preset") or "seed", flag(argv, "--resume")  # they set every other default
    argv = expand_decoder_std(argv)
    if resume:
        from jaxvae.resilience import resume_config

        base = resume_config(resume, preset=flag(argv, "--preset"), out=flag(argv, "--out"))
    else:
        base = preset(name)
    args = parse(TrainArgs, argv, default=TrainArgs(config=base, preset=name), prog="train")
    from jaxvae import parallel
    from jaxvae.train import train

    parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    train(args.config, args.resume or args.out, overwrite=args.overwrite, quiet=args.quiet,
          resume=args.resume is not None, tensorboard=args.tensorboard, preset=None if args.resume else name)
    return 0
