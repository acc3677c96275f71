"""A run directory on disk: what it holds, how it is created, opened and read.

  RUN/config.json      the resolved Config (rebuilds exactly this model)
  RUN/meta.json        jaxvae version and run-format number
  RUN/metrics.jsonl    one JSON object per logged step
  RUN/checkpoints/     Orbax checkpoints
  RUN/checkpoints.damaged/  checkpoints found damaged on resume, moved aside (not deleted)
  RUN/summary.json     final metrics, wall time, images/s, reconstruction MSE
  RUN/*.png            curves, reconstructions, samples, interpolation
  RUN/report.html      the self-contained HTML report (jaxvae report)
  RUN/tensorboard/     event files, with train --tensorboard
  RUN/samplers/        samplers fitted to the latents (jaxvae fit-sampler), e.g. gmm.json
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from jaxvae.atomic import write_text
from jaxvae.config import Config, ConfigError

FORMAT = 2  # 2: the decoder's likelihood head owns its scale parameters (likelihoods.py)
VERSION = "0.1.0"
CONFIG, META, METRICS, SUMMARY, CHECKPOINTS, DAMAGED = (
    "config.json", "meta.json", "metrics.jsonl", "summary.json", "checkpoints", "checkpoints.damaged")
PICTURES = ("curves.png", "reconstructions.png", "samples.png", "interpolation.png")
REPORT, TENSORBOARD = "report.html", "tensorboard"  # jaxvae report; train --tensorboard
SAMPLERS = "samplers"  # jaxvae fit-sampler
# Everything a run writes; --overwrite removes exactly these and nothing else of the user's.
RUN_FILES = (CONFIG, META, METRICS, SUMMARY, CHECKPOINTS, DAMAGED, *PICTURES, REPORT, TENSORBOARD, SAMPLERS)


class RunError(ConfigError):
    """A run directory that is missing, not a run, or not ours to write."""


def is_run(path: Path) -> bool:
    return (path / CONFIG).is_file()


def create(out: str | os.PathLike, config: Config, overwrite: bool = False) -> Path:
    """Make `out` a fresh run for `config`; refuse to touch an existing run unless overwrite, and anything
    that is not a jaxvae run always (outputs.check_run_out)."""
    from jaxvae.outputs import check_run_out  # the one --out policy (it imports this module)

    existing = check_run_out(out, overwrite)  # refuses a user's file or folder even with overwrite
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    for name in existing:
        target = path / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    # meta.json first: config.json is what makes a directory a run (is_run), so a crash between
    # the two leaves no run without its format number
    write_json(path / META, {"jaxvae_version": VERSION, "format": FORMAT})
    write_json(path / CONFIG, config.to_dict())
    return path


def open_run(run: str | os.PathLike) -> tuple[Path, Config]:
    """Check that `run` is a jaxvae run this version can read; return (path, its config). Never writes."""
    path = Path(run)
    if not path.exists():
        raise RunError(f"run directory {path} does not exist")
    if not path.is_dir() or not is_run(path):
        raise RunError(f"{path} is not a jaxvae run (no {CONFIG})")
    try:
        meta = read_json(path / META)
    except (OSError, ValueError):
        raise RunError(f"{path} has no readable {META}: not written by this jaxvae (run format {FORMAT})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        meta = meta if isinstance(meta, dict) else {}
        raise RunError(f"{path} was written by jaxvae {meta.get('jaxvae_version', '?')} "
                       f"(run format {meta.get('format')}); this jaxvae {VERSION} reads format {FORMAT}")
    try:
        config = Config.from_dict(read_json(path / CONFIG))
    except (ValueError, TypeError) as e:
        raise RunError(f"{path / CONFIG} is not a valid jaxvae config: {e}") from None
    return path, config


def write_json(path: Path, obj) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def append_metrics(path: Path, record: dict) -> None:
    with open(path / METRICS, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def sync_metrics(path: Path) -> None:
    """Flush metrics.jsonl to the disk, so a checkpoint never outlives the records before it."""
    file = Path(path) / METRICS
    if file.is_file():
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def truncate_metrics(path: Path, step: int) -> int:
    """Keep only the complete records up to `step` (a resume rewinds to its checkpoint).

    Returns how many records were dropped. The rewrite is atomic, like write_json.
    """
    file = Path(path) / METRICS
    if not file.is_file():
        return 0
    lines = file.read_text().splitlines()
    kept = [line for line in lines if (rec := _parse_record(line)) is not None and rec.get("step", 0) <= step]
    write_text(file, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def _parse_record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:  # a torn last line from a crash
        return None
    return record if isinstance(record, dict) else None


def read_metrics(path: Path) -> list[dict]:
    """All complete records of metrics.jsonl (a torn last line from a crash is ignored)."""
    file = Path(path) / METRICS
    if not file.is_file():
        return []
    return [r for r in map(_parse_record, file.read_text().splitlines()) if r is not None]
