"""`jaxvae report RUN`: the run's self-contained HTML report (report.py)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import tyro

from jaxvae.cli.common import Run, parse


@dataclasses.dataclass(frozen=True)
class ReportArgs:
    """Write a run's self-contained HTML report: config, summary, curves, reconstructions, samples,
    interpolations, KL per dimension, latent traversals and evaluation results. One file, images
    inline, no network requests; open it in any browser. Works on partial runs too."""

    run: Run
    """Run directory."""
    out: Annotated[str | None, tyro.conf.arg(metavar="FILE|DIR",
                                             help_behavior_hint="(default: RUN/report.html)")] = None
    """HTML file to write (a folder: report.html inside it)."""


def run(argv: list[str]) -> int:
    a = parse(ReportArgs, argv, prog="report")
    from jaxvae.report import write_report

    out = write_report(a.run, a.out)
    print(f"wrote {out}")
    return 0

