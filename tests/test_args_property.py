"""Property test of every command's arguments: random odd values (NaN, +-inf, 0, negative, huge,
empty or odd paths) in every numeric and path field are either accepted and work, or refused with
one line and exit status 2; never a traceback, and never a changed file in the run given.

The fields come from the commands' dataclasses (Config's for train), so a new field is covered
without touching this test. train stops after its arguments are parsed and validated (a stub for
the training itself), which keeps each example fast."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import typing

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from jaxvae import cli
from jaxvae.cli import data, evaluate, latents, pictures, report
from jaxvae.cli.train import TrainArgs
from jaxvae.config import Config

ARGS = {  # command -> (its arguments' dataclass, the flags that keep an accepted run small)
    "train": (TrainArgs, []),
    "sample": (pictures.SampleArgs, ["--n", "2"]),
    "reconstruct": (pictures.ReconstructArgs, ["--n", "2"]),
    "interpolate": (pictures.InterpolateArgs, ["--steps", "3"]),
    "traverse": (pictures.TraverseArgs, ["--top", "1", "--steps", "3"]),
    "evaluate": (evaluate.EvaluateArgs, ["--limit", "2", "--iw-samples", "2"]),
    "report": (report.ReportArgs, []),
    "prepare": (data.PrepareArgs, ["--image-size", "8"]),
    "show-data": (data.ShowDataArgs, ["--image-size", "8", "--count", "4"]),
    "encode": (latents.EncodeArgs, []),  # --data shapes below, when it is not the odd field
    "export": (latents.ExportArgs, []),
    "fit-sampler": (latents.FitSamplerArgs, ["--components", "2", "--limit", "64"]),
}
OUT_SUFFIX = {"evaluate": ".json", "encode": ".npz", "export": ".safetensors"}  # of --out when not the odd field
WRITES_INTO_RUN = {"fit-sampler": "samplers"}  # the one folder of the run a command may write
NUMBERS = ["nan", "inf", "-inf", "0", "-1", "-0.5", "1e308", "2147483647", "2147483648", str(10**30), ""]
PATHS = ["", " ", ".", "nonexistent", "nonexistent/", "/nonexistent/deep/x.png", "RUN", "RUN/", "RUN/x.png",
         "RUN/config.json", "USER_FILE", "USER_DIR", "USER_DIR/"]


def _kind(field: dataclasses.Field, owner) -> str | None:
    hint = typing.get_type_hints(owner, include_extras=True)[field.name]
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
    if base in (int, float):
        return "number"
    if base is str or base == (str | None):
        return "path"
    return None


def fields(command: str) -> list[tuple[str, str, bool]]:
    """(flag, kind, positional) of every numeric and str field of a command (Config's too, for train)."""
    cls, _ = ARGS[command]
    out = []
    for owner in (cls, Config) if command == "train" else (cls,):
        for f in dataclasses.fields(owner):
            kind = _kind(f, owner)
            if kind and f.name != "config":
                out.append(("--" + f.name.replace("_", "-"), kind, f.name in ("run", "src")))
    return out


CASES = [(command, flag, kind, positional) for command in ARGS for flag, kind, positional in fields(command)]


def tree_hash(path, skip: str = "") -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if skip and f.relative_to(path).parts[0] == skip:
            continue
        h.update(str(f.relative_to(path)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def test_every_numeric_and_path_field_is_covered():
    flags = {(command, flag) for command, flag, _, _ in CASES}
    for expected in [("train", "--lr"), ("train", "--out"), ("train", "--val-fraction"), ("train", "--data"),
                     ("evaluate", "--memory-cap-mb"), ("sample", "--temperature"), ("sample", "--run"),
                     ("prepare", "--src"), ("show-data", "--scale"), ("encode", "--batch-size"),
                     ("export", "--data"), ("fit-sampler", "--components")]:
        assert expected in flags


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          phases=[Phase.explicit, Phase.generate])  # no shrinking: the failing argv is in the message
@given(case=st.sampled_from(CASES), number=st.sampled_from(NUMBERS), path=st.sampled_from(PATHS))
def test_odd_values_are_accepted_or_one_line(case, number, path, trained_run, tmp_path_factory, monkeypatch):
    command, flag, kind, positional = case
    work = tmp_path_factory.mktemp("odd")
    user_file, user_dir = work / "mine.png", work / "mine"
    user_file.write_bytes(b"the user's own file")
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("mine")
    value = number if kind == "number" else (path.replace("RUN", str(trained_run))
                                             .replace("USER_FILE", str(user_file)).replace("USER_DIR", str(user_dir)))
    # a valid default for every required argument, then the odd value in one field
    required = {"run": str(trained_run), "src": "shapes"}
    outs = {"train": str(work / "run"), "prepare": str(work / "cache"), "show-data": str(work / "grid.png")}
    argv = [command]
    if command in ("prepare",):
        argv.append(value if positional else required["src"])
    elif command not in ("train", "show-data"):
        argv.append(value if positional else required["run"])
    argv += ARGS[command][1]
    if command in outs and flag != "--out":
        argv += ["--out", outs[command]]
    if command not in outs and flag != "--out" and command not in ("report", "fit-sampler"):
        argv += ["--out", str(work / ("x" + OUT_SUFFIX.get(command, ".png")))]
    if command == "encode" and flag != "--data":
        argv += ["--data", "shapes"]
    if not positional:
        argv += [flag, value]
    if command == "train":
        argv += ["--image-size", "16", "--patch-size", "4"] if flag not in ("--image-size", "--patch-size") else []

        def stop(config, out, **kwargs):  # the arguments parsed and validated: stop before training
            raise SystemExit(0)

        monkeypatch.setattr("jaxvae.train.train", stop)
    before = tree_hash(trained_run, skip=WRITES_INTO_RUN.get(command, ""))
    err = io.StringIO()
    monkeypatch.chdir(work)
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # tyro's own usage errors (a value of the wrong type), or the train stub
            code = e.code
    text = err.getvalue()
    assert "Traceback" not in text, (argv, text)
    assert code in (0, 2), (argv, code, text)
    if code == 2:  # one line: the error (after at most the line naming the checkpoint it loaded)
        lines = text.strip().splitlines()
        assert lines[-1].startswith("jaxvae: error: ") and all(line.startswith("jaxvae: ") for line in lines), (
            argv, text)
        assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith("jaxvae: checkpoint ")), (argv, text)
    assert tree_hash(trained_run, skip=WRITES_INTO_RUN.get(command, "")) == before, argv
    assert user_file.read_bytes() == b"the user's own file" and (user_dir / "notes.txt").read_text() == "mine", argv
