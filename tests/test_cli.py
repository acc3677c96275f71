"""The CLI end to end on a micro run, the Python API round trip, and every bad-input case."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import micro_config
from PIL import Image

import jaxvae
from jaxvae import cli
from jaxvae import data as data_lib
from jaxvae import run as run_lib
from jaxvae.cli.common import MAX_SAMPLES, one_line

MICRO_FLAGS = ["--image-size", "16", "--patch-size", "4", "--hidden", "32", "--depth", "1", "--heads", "2",
               "--mlp-ratio", "2", "--z-dim", "4", "--batch-size", "16", "--steps", "12", "--log-every", "4",
               "--eval-every", "6", "--ckpt-every", "6", "--quiet"]
RUN_FILES = ["config.json", "meta.json", "metrics.jsonl", "summary.json", "checkpoints", "curves.png",
             "reconstructions.png", "samples.png", "interpolation.png"]

# test_cli, test_export and test_report read the session's trained_run: one worker takes the three, so it is
# trained once.
pytestmark = pytest.mark.xdist_group("trained_run")


def test_xdist_groups_reach_the_scheduler(request):
    """The shared runs are trained once only if `--dist loadgroup` really groups: with pytest 9.2 and
    xdist 3.8 it silently did not (pytest-dev/pytest-xdist#1386), and each worker trained them again."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not request.config.getoption("loadgroup", False):
        pytest.skip("not run by xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@trained_run"), request.node.nodeid


def jaxvae_cmd(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "jaxvae", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def _snapshot(path: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


@pytest.mark.slow
def test_train_through_the_real_entry_point_writes_every_file(tmp_path):
    out = tmp_path / "run"
    # the tiny preset's conv ResNet, shrunk: 16 px = patch 2 x 2^2 levels
    r = jaxvae_cmd("train", "--preset", "tiny", *MICRO_FLAGS, "--patch-size", "2", "--channel-mults", "1,2",
                   "--out", str(out))
    assert r.returncode == 0, r.stderr
    for name in RUN_FILES:
        assert (out / name).exists(), name
    records = run_lib.read_metrics(out)
    assert [r["step"] for r in records] == [4, 6, 8, 12]
    keys = {"loss", "reconstruction_loss", "kl_loss", "x_std", "z_std", "grad_norm", "lr", "images_per_s", "step"}
    assert all(keys <= set(r) for r in records)
    assert [r["step"] for r in records if "val_loss" in r] == [6, 12]
    summary = run_lib.read_json(out / "summary.json")
    assert summary["steps"] == 12 and 0 <= summary["reconstruction_mse"] <= 1
    assert run_lib.read_json(out / "config.json")["z_dim"] == 4
    for png in ("curves.png", "reconstructions.png", "samples.png", "interpolation.png"):
        assert Image.open(out / png).size[0] > 300


def test_python_api_round_trip(trained_run):
    vae = jaxvae.load(trained_run)
    assert vae.config == micro_config()
    x = data_lib.to_model_range(data_lib.load_dataset(vae.config).val[:5])
    q = vae.encode(x)
    assert isinstance(q.mean, np.ndarray) and q.mean.shape == (5, 4) and np.all(q.std > 0)
    p = vae.decode(q.mean)
    assert p.mean.shape == x.shape
    np.testing.assert_allclose(vae.reconstruct(x), p.mean, atol=1e-5)
    s = vae.sample(6, seed=1, temperature=0.5)
    assert s.shape == (6, 16, 16, 3) and isinstance(s, np.ndarray)
    np.testing.assert_array_equal(s, vae.sample(6, seed=1, temperature=0.5))
    path = vae.interpolate(x[0], x[1], steps=5, method="lerp")
    assert path.shape == (5, 16, 16, 3)
    # the ends of a latent interpolation are the reconstructions of the two images
    np.testing.assert_allclose(path[[0, -1]], vae.reconstruct(x[:2]), atol=1e-4)
    np.testing.assert_allclose(vae.interpolate(x[0], x[1], steps=5)[[0, -1]], path[[0, -1]], atol=1e-4)


def test_api_takes_images_by_one_rule(trained_run):
    """uint8 is converted; floats outside [-1, 1] are refused naming range and dtype; floats with no
    negative value ([0, 1] data?) are refused as ambiguous unless data_range says which they are."""
    vae = jaxvae.load(trained_run)
    u8 = vae.held_out(4, as_uint8=True)
    x = vae.held_out(4)
    assert u8.dtype == np.uint8 and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(x, data_lib.to_model_range(u8))
    np.testing.assert_allclose(vae.encode(u8).mean, vae.encode(x).mean, atol=1e-6)
    unit = (x + 1) / 2  # the same images in [0, 1]
    with pytest.raises(ValueError, match=r"no value below 0 .* data_range='01' to convert"):
        vae.encode(unit)
    np.testing.assert_allclose(vae.encode(unit, data_range="01").mean, vae.encode(x).mean, atol=1e-5)
    with pytest.raises(ValueError, match=r"x is float32 with values in \[.*\]: float images must be in \[-1, 1\] "
                                         r"\(0..255 values\? pass them as uint8\)"):
        vae.reconstruct(u8.astype(np.float32))
    with pytest.raises(ValueError, match="no value below 0"):
        jaxvae.evaluate(vae, unit, iw_samples=2)
    r01 = jaxvae.evaluate(vae, unit, iw_samples=2, data_range="01")
    assert r01["mse"]["mean"] == pytest.approx(jaxvae.evaluate(vae, u8, iw_samples=2)["mse"]["mean"], rel=1e-4)
    out = jaxvae.to_uint8(vae.reconstruct(x))
    assert out.dtype == np.uint8 and out.shape == (4, 16, 16, 3)


def test_api_rejects_wrong_shapes(trained_run):
    vae = jaxvae.load(trained_run)
    with pytest.raises(ValueError, match=r"shape \(B, 16, 16, 3\)"):
        vae.encode(np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 4\)"):
        vae.decode(np.zeros((2, 3)))


@pytest.mark.parametrize("command", ["sample", "reconstruct", "interpolate"])
def test_picture_commands_write_a_png_and_leave_the_run_alone(trained_run, tmp_path, command):
    before = _snapshot(trained_run)
    out = tmp_path / f"{command}.png"
    assert cli.main([command, str(trained_run), "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 200
    assert _snapshot(trained_run) == before


WRITERS = {  # every command that writes, with flags that keep it fast, and its --out
    "sample": ["--n", "2"], "reconstruct": ["--n", "2"], "interpolate": ["--steps", "3"],
    "traverse": ["--top", "1", "--steps", "3"], "evaluate": ["--limit", "2", "--iw-samples", "2"], "report": [],
}


def _user_png(path: Path) -> Path:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)  # the user's own picture: no jaxvae marker
    return path


@pytest.mark.slow  # every writer end to end; test_picture_commands_write_a_png_and_leave_the_run_alone is the fast one
@pytest.mark.parametrize("command", WRITERS)
def test_a_user_file_survives_every_command_that_writes(capsys, trained_run, tmp_path, command):
    """--out naming a user's file is refused in one line; the same --out naming what jaxvae wrote is
    replaced, and the command says what it wrote and where."""
    suffix = {"evaluate": ".json", "report": ".html"}.get(command, ".png")
    user = tmp_path / f"mine{suffix}"
    _user_png(user) if suffix == ".png" else user.write_text("{}" if suffix == ".json" else "<html></html>")
    before = user.read_bytes()
    argv = [command, str(trained_run), *WRITERS[command]]
    assert "exists and was not written by jaxvae; it is not replaced" in _error(capsys, [*argv, "--out", str(user)])
    assert user.read_bytes() == before
    ours = tmp_path / f"ours{suffix}"
    for _ in range(2):  # the second run replaces the first's output
        assert cli.main([*argv, "--out", str(ours)]) == 0
        printed = capsys.readouterr().out
        assert "wrote " in printed and str(ours) in printed, printed
    assert ours.is_file() and user.read_bytes() == before


def test_show_data_and_prepare_and_train_leave_a_user_file_alone(capsys, tmp_path):
    user = _user_png(tmp_path / "mine.png")
    before = user.read_bytes()
    err = _error(capsys, ["show-data", "--out", str(user), "--image-size", "16", "--count", "4"])
    assert "exists and was not written by jaxvae" in err
    assert "exists and is not a folder" in _error(capsys, ["prepare", "shapes", "--out", str(user), "--overwrite",
                                                          "--image-size", "16"])
    assert "exists and is not a folder" in _error(capsys, ["train", *MICRO_FLAGS, "--out", str(user), "--overwrite"])
    assert user.read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sample", "reconstruct", "interpolate", "traverse"])
def test_picture_out_folders_and_runs(capsys, trained_run, tmp_path, command, monkeypatch):
    """A trailing slash or an existing folder means "write inside it", under a name that is not a
    run file's; a path inside a run (the default from `cd RUN`, too) is refused."""
    argv = [command, str(trained_run), *WRITERS[command]]
    picture = {"sample": "samples", "reconstruct": "reconstructions", "interpolate": "interpolation",
               "traverse": "traversals"}[command]
    expected = f"{trained_run.name}-{picture}.png"
    before = _snapshot(trained_run)
    assert cli.main([*argv, "--out", str(tmp_path / "new") + "/"]) == 0
    assert f"to {tmp_path / 'new' / expected}" in capsys.readouterr().out
    assert Image.open(tmp_path / "new" / expected).size[0] > 50
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    assert (tmp_path / expected).is_file()
    capsys.readouterr()  # what the successful commands said (the checkpoint they used, what they wrote)
    assert "is inside the run" in _error(capsys, [*argv, "--out", str(trained_run / f"{picture}.png")])
    monkeypatch.chdir(trained_run)
    assert "is inside the run" in _error(capsys, [command, ".", *WRITERS[command]])
    assert _snapshot(trained_run) == before


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxvae: error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("flags, message", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--posterior-scale", "std"], "unknown posterior_scale 'std'"),
    (["--decoder-scale", "exp"], "unknown decoder_scale 'exp'"),
    (["--patch-size", "5"], "patch_size 5 does not divide image_size 16"),
    (["--decoder-head", "broadcast"], "--decoder-head broadcast is for --arch conv, not transformer"),
    # the tiny preset's head is broadcast: moved to another arch, it says what to pass
    (["--preset", "tiny", "--arch", "transformer"], "not transformer: pass --decoder-head dense"),
    (["--arch", "conv", "--decoder-head", "spatial"], "unknown decoder_head 'spatial'"),
    (["--image-size", "0"], "image_size must be a positive integer"),
    (["--steps", "0"], "steps must be a positive integer"),
    (["--batch-size", "-3"], "batch_size must be a positive integer"),
    (["--beta", "-1"], "beta must be >= 0"),
    # every float field must be finite (one rule, config.check_numbers), every int field in range
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--beta", "inf"], "--beta must be a finite number, got inf"),
    (["--free-bits", "inf"], "--free-bits must be a finite number, got inf"),
    (["--decoder-std", "inf"], "--decoder-std must be a finite number, got inf"),
    (["--val-fraction", "-inf"], "--val-fraction must be a finite number, got -inf"),
    (["--seed", str(10**20)], "--seed 100000000000000000000 is out of range"),
])
def test_bad_training_flags(capsys, tmp_path, flags, message):
    out = tmp_path / "never"
    argv = ["train", *MICRO_FLAGS, *flags, "--out", str(out)]
    if flags[0] == "--preset":
        argv = ["train", *flags, "--out", str(out)]
    assert message in _error(capsys, argv)
    assert not out.exists()


def test_existing_run_is_refused_without_overwrite(capsys, trained_run):
    before = _snapshot(trained_run)
    err = _error(capsys, ["train", *MICRO_FLAGS, "--out", str(trained_run)])
    assert "already holds a run" in err and "--overwrite" in err
    assert _snapshot(trained_run) == before


@pytest.mark.slow
def test_overwrite_replaces_only_the_run(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", *MICRO_FLAGS, "--steps", "4", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert cli.main(["train", *MICRO_FLAGS, "--steps", "4", "--out", str(out), "--overwrite", "--seed", "3"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert run_lib.read_json(out / "config.json")["seed"] == 3


def test_train_out_is_never_a_user_file_or_folder(capsys, tmp_path):
    """--out '' (the current directory), a user's file and a non-run folder are refused even with
    --overwrite, before any data is read; everything of the user's survives."""
    user_file = tmp_path / "f.txt"
    user_file.write_text("data")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert "--out must not be empty" in _error(capsys, ["train", *MICRO_FLAGS, "--out", ""])
    err = _error(capsys, ["train", *MICRO_FLAGS, "--out", str(user_file), "--overwrite"])
    assert "exists and is not a folder; jaxvae does not replace it, even with --overwrite" in err
    for flags in ([], ["--overwrite"]):
        err = _error(capsys, ["train", *MICRO_FLAGS, "--out", str(folder), *flags])
        assert "is a non-empty folder that is not a jaxvae run (it holds notes.txt)" in err
    assert user_file.read_text() == "data" and os.listdir(folder) == ["notes.txt"]


@pytest.mark.parametrize("command", ["sample", "reconstruct", "interpolate"])
def test_missing_or_non_run_directories(capsys, tmp_path, command):
    assert "does not exist" in _error(capsys, [command, str(tmp_path / "nope"), "--out", str(tmp_path / "a.png")])
    (tmp_path / "empty").mkdir()
    assert "is not a jaxvae run" in _error(capsys, [command, str(tmp_path / "empty"), "--out", str(tmp_path / "a.png")])


def test_non_finite_command_flags_are_one_line(capsys, trained_run, tmp_path):
    """The same rule for every command's own arguments, before anything is read or written."""
    before = _snapshot(trained_run)
    for argv, message in [
        (["evaluate", str(trained_run), "--memory-cap-mb", "nan"], "--memory-cap-mb must be a finite number, got nan"),
        (["sample", str(trained_run), "--temperature", "inf", "--out", str(tmp_path / "s.png")],
         "--temperature must be a finite number, got inf"),
        (["traverse", str(trained_run), "--span", "-inf", "--out", str(tmp_path / "t.png")],
         "--span must be a finite number, got -inf"),
    ]:
        assert message in _error(capsys, argv)
    assert _snapshot(trained_run) == before and not list(tmp_path.iterdir())


def test_long_work_is_estimated_and_refused_without_yes(capsys, trained_run, tmp_path):
    """evaluate times a first device call and refuses a job estimated over an hour unless --yes;
    sample caps --n at one grid's worth."""
    # 2e9 decodes: ~50 h at the micro model's rate on a CPU here, far from the 1 h limit whatever the load
    # (1e8 was measured at 1.5 to 2.5 h, close enough to the limit to run the job when the machine was idle)
    err = _error(capsys, ["evaluate", str(trained_run), "--iw-samples", "2000000000", "--limit", "1"])
    assert "this evaluation is 1 examples x 2,000,000,000 samples = 2e+09 decodes, about" in err
    assert "pass --yes to run it, or lower --iw-samples or --limit" in err
    err = _error(capsys, ["sample", str(trained_run), "--n", "100000", "--out", str(tmp_path / "s.png")])
    assert f"--n 100000 is more than one PNG grid shows (at most {MAX_SAMPLES})" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_ctrl_c_stops_a_long_device_call_with_one_line_and_130(trained_run):
    """Ctrl-C while one jitted call runs for hours: one line, exit status 130, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    p = subprocess.Popen([sys.executable, "-m", "jaxvae", "evaluate", str(trained_run), "--iw-samples", "100000000",
                          "--limit", "1", "--yes"], stderr=subprocess.PIPE, text=True, env=env)
    seen = [p.stderr.readline() for _ in range(1)]
    while seen[-1] and "decodes, about" not in seen[-1]:  # printed just before the long call starts
        seen.append(p.stderr.readline())
    assert "decodes, about" in seen[-1], seen
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 130
    rest = p.stderr.read()
    assert rest.strip() == "jaxvae: interrupted" and "Traceback" not in rest


def test_bad_picture_flags(capsys, trained_run, tmp_path):
    assert "--n must be positive" in _error(capsys, ["sample", str(trained_run), "--n", "0"])
    assert "unknown method" in _error(capsys, ["interpolate", str(trained_run), "--method", "cubic",
                                               "--out", str(tmp_path / "i.png")])


# A flag each command's help must show (besides its usage line).
HELP_FLAGS = {"train": ("--posterior-scale", "--beta", "--lr-schedule", "--warmup-steps", "--ema", "--early-stop"),
              "sample": ("--temperature",), "reconstruct": ("--n",), "interpolate": ("--method",),
              "prepare": ("--overwrite",), "show-data": ("--data",), "report": ("--out",), "traverse": ("--dims",),
              "evaluate": ("--iw-samples", "--checkpoint", "--disentanglement"), "encode": ("--what",),
              "export": ("--checkpoint",), "fit-sampler": ("--components",)}


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_help_explains_every_command(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert f"usage: jaxvae {name}" in out, out[:200]
    for flag in HELP_FLAGS[name]:
        assert flag in out, (name, flag)


def test_help_through_the_real_entry_point():
    r = jaxvae_cmd("train", "--help")
    assert r.returncode == 0 and "--posterior-scale" in r.stdout and "--ema" in r.stdout


def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # rich wraps lines: compare words


def test_help_names_positionals_and_shows_each_default_once(capsys):
    for command in ("sample", "reconstruct", "interpolate", "traverse", "evaluate", "report"):
        text = _help(capsys, command)
        assert f"usage: jaxvae {command} [-h] " in text and "RUN Run directory" in text and "(required)" in text, text
    assert "SRC The source: a folder" in _help(capsys, "prepare")
    report = _help(capsys, "report")
    assert report.count("(default: RUN/report.html)") == 1 and "(default: None)" not in report
    assert "(default: ./NAME-samples.png, NAME the run folder's name)" in _help(capsys, "sample")
    assert "--decoder-std FLOAT|per-dim|shared|fixed" in _help(capsys, "train")


def test_unknown_command(capsys):
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


CTRL_C_IN_GC = """
import gc, os, signal, sys, time
from jaxvae.cli.ctrl_c import CtrlC
fired = []
def cb(phase, info):  # like JAX's _xla_gc_callback: the signal lands while it runs
    if not fired:
        fired.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(10000))
gc.callbacks.append(cb)
with CtrlC() as c:
    try:
        gc.collect()
        time.sleep(5)
        print("not interrupted", file=sys.stderr)
    except KeyboardInterrupt:
        c.handled.set()
        print("caught", file=sys.stderr)
"""


def test_ctrl_c_inside_a_gc_callback_is_not_dropped():
    """Raised inside a gc callback, KeyboardInterrupt would print 'Exception ignored' and a traceback and
    be lost; the handler sends it again from outside, so the main thread still gets it, in one piece."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    p = subprocess.run([sys.executable, "-c", CTRL_C_IN_GC], capture_output=True, text=True, env=env, timeout=60)
    assert (p.returncode, p.stderr.strip()) == (0, "caught")


@pytest.mark.parametrize("argv, message", [
    (["sample", "RUN", "--n", "nan"], "Error parsing --n: invalid literal for int() with base 10: 'nan' "
                                      "(see jaxvae sample --help)"),
    (["train", "--z-dm", "4"], "Unrecognized options: --z-dm, 4; perhaps you meant: --z-dim INT"),
    (["encode"], "Missing from jaxvae encode: RUN, --data STR (see jaxvae encode --help)"),
    (["train", "--arch"], "Missing value for argument '--arch'"),
    (["evaluate", "RUN", "--iw-samples", "1.5"], "Error parsing --iw-samples"),
])
def test_parse_errors_are_one_line(capsys, argv, message):
    """tyro draws its parse errors as a box of ten lines; each command says them in one."""
    assert message in _error(capsys, argv)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_help_imports_no_jax(name):
    """`jaxvae COMMAND --help` answers without importing JAX (seconds on a laptop)."""
    code = ("import sys\nfrom jaxvae.cli import main\ntry:\n    main([sys.argv[1], '--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0\n"
            "assert 'jax' not in sys.modules and 'jaxvae.api' not in sys.modules\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    p = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"usage: jaxvae {name}" in p.stdout


UNICODE_BOX = """╭─ Unrecognized options ───────────────────╮
│ Unrecognized options: --z-dm, 1          │
│ ──────────────────────────────────────── │
│ Perhaps you meant:                       │
│     --z-dim INT                          │
│         Latent dimensions. (default: 64) │
│ ──────────────────────────────────────── │
│ For full helptext, run p --help          │
╰──────────────────────────────────────────╯
"""
ASCII_BOX = "\n".join([
    " Value error",
    " ----------------------------------------------------------------",
    "  Error parsing --n: invalid literal for int() with base 10: 'x'",
    "  ----------------------------------------------------------------",
    "  Argument helptext:",
    "      --n INT",
    "      Number of samples. (default: 20)",
    "  ----------------------------------------------------------------",
    "  For full helptext, see p --help", ""])


def test_one_line_reads_both_drawings_of_tyros_box():
    """tyro draws Unicode edges on a UTF-8 terminal and spaces and dashes elsewhere (as under pytest's capture)."""
    assert one_line(UNICODE_BOX) == "Unrecognized options: --z-dm, 1; perhaps you meant: --z-dim INT"
    assert one_line(ASCII_BOX) == "Error parsing --n: invalid literal for int() with base 10: 'x'"
