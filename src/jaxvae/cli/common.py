"""What every command shares: the parser (tyro, with its errors as one line), the RUN positional, the
picture commands' --out, and small checks of counts. Imports no JAX: `jaxvae COMMAND --help` is fast.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path
from typing import Annotated

import tyro

from jaxvae.config import ConfigError, check_numbers

# The run positional shows as RUN in usage and help (not STR), in every command that reads a run.
Run = Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]

MAX_SAMPLES = 200  # one PNG grid: 20 rows of 10; more is a job for the Python API (vae.sample)
MAX_COLUMNS = 100  # images in one row of a picture (reconstructions, interpolation steps, traversals)


def picture_out_flag(picture: str):
    """A picture command's --out: None means NAME-<picture>.png (NAME: the run folder's name) right here."""
    hint = f"(default: ./NAME-{picture}.png, NAME the run folder's name)"
    return Annotated[str | None, tyro.conf.arg(metavar="FILE|DIR", help_behavior_hint=hint)]


def parse(cls, argv: list[str], prog: str, default=None):
    """tyro-parse a command's arguments (a dataclass) and check their numbers (config.check_numbers).

    tyro draws a parse error as a multi-line box on stderr; it becomes one ConfigError line here
    (the box's first section, e.g. "Error parsing --n: invalid literal for int() ...") that the CLI
    prints as `jaxvae: error: ...`. --help still prints to stdout and exits 0.
    """
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = tyro.cli(cls, args=argv, default=default, prog=f"jaxvae {prog}")
    except SystemExit as e:
        if e.code in (0, None):
            raise
        raise ConfigError(f"{one_line(err.getvalue())} (see jaxvae {prog} --help)") from None
    sys.stderr.write(err.getvalue())  # a warning of a parse that succeeded still reaches the user
    check_numbers(args)
    return args


def one_line(box: str) -> str:
    """tyro's error box as one line: each section's text, with the arguments it lists (their help
    dropped), sections joined by "; ". E.g. "Unrecognized options: --z-dm; perhaps you meant: --z-dim INT".

    tyro draws the box with Unicode edges on a UTF-8 terminal and with spaces and dashes otherwise;
    both read the same here: rows indented 0 (text), 4 (an argument) or 8+ (its help) past the edge."""
    rows: list[str | None] = []  # None: a rule between sections
    for line in box.splitlines()[1:]:  # the first line is the top edge, with the box's title
        text = re.sub(r"^(\s*)[│┃|]", r"\1 ", line.rstrip().rstrip("│┃|").rstrip())
        rows.append(None if set(text.strip()) <= set("─━-╰╯+") else text)
    base = min((len(r) - len(r.lstrip()) for r in rows if r), default=0)
    parts, head, items = [], [], []
    for row in [*rows, None]:
        if row is not None:
            indent = len(row) - len(row.lstrip()) - base
            (head if indent == 0 else items if indent == 4 else []).append(row.strip())
            continue
        text = " ".join(head)
        if text and not text.startswith(("For full helptext", "Argument helptext")):
            text = text[:1].lower() + text[1:] if parts else text
            parts.append(text + (" " + ", ".join(items) if items else ""))
        head, items = [], []
    return "; ".join(parts) or "could not parse the arguments"


def flag(argv: list[str], name: str) -> str | None:
    """The value of flag `name` in argv (`--x V` or `--x=V`), read before parsing; None when absent."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def positive(**values: int) -> None:
    for name, v in values.items():
        if v <= 0:
            raise ConfigError(f"--{name} must be positive, got {v}")


def at_most(limit: int, **values: int) -> None:
    for name, v in values.items():
        if v > limit:
            raise ConfigError(f"--{name} {v} is more than one picture's row shows (at most {limit})")


def picture_out(out: str | None, run: str, picture: str) -> Path:
    """The PNG a picture command writes, checked before any work (outputs.output_file): --out, or
    NAME-<picture>.png in the current folder or in the folder --out names; never inside a run."""
    from jaxvae.outputs import output_file

    path = Path(run).resolve()
    name = f"{(path.stem if path.is_file() else path.name) or 'run'}-{picture}.png"  # a run, or an exported file
    return output_file(name if out is None else out, name)


def load(run: str, checkpoint: str):
    """jaxvae.load(run, checkpoint), saying on stderr which checkpoint it used."""
    from jaxvae.api import load as load_run
    from jaxvae.api import say_checkpoint

    vae = load_run(run, checkpoint=checkpoint)
    say_checkpoint(vae)
    return vae
