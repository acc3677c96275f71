"""Peak host memory of `make demo`: the same training command, into a temporary run directory.

    .venv/bin/python benchmarks/memory.py [--steps N]

Prints the peak resident set size (getrusage of the child: its largest RSS over the whole run,
JAX, XLA's compiled code, the data and the pictures included) against the 2 GB goal.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_MB = 2048
BIN = Path(sys.executable).parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="fewer steps than the tiny preset's, for a quick look")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(BIN / "jaxvae"), "train", "--preset", "tiny", "--data", "shapes", "--out", f"{tmp}/demo",
               "--overwrite", "--quiet"] + (["--steps", str(a.steps)] if a.steps else [])
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    verdict = "within" if peak_mb <= GOAL_MB else "OVER"
    print(f"make demo ({' '.join(cmd[1:5])} ...): peak RSS {peak_mb:.0f} MB, {verdict} the {GOAL_MB} MB goal; "
          f"{wall:.0f} s wall")
    if a.json:
        a.json.write_text(json.dumps({"command": cmd[1:], "peak_rss_mb": peak_mb, "goal_mb": GOAL_MB,
                                      "wall_s": wall}, indent=2) + "\n")
    return 0 if peak_mb <= GOAL_MB else 1


if __name__ == "__main__":
    sys.exit(main())
