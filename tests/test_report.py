"""The HTML report (jaxvae.report), the TensorBoard events and the progress bar of one tiny training
run, and the report opened in headless Chromium (skipped where there is no chromium)."""

from __future__ import annotations

import base64
import html
import importlib.util
import io
import json
import os
import re
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HAS_TENSORBOARDX, micro_config
from PIL import Image

from jaxvae import cli, report, sample, train
from jaxvae import data as data_lib
from jaxvae import run as run_lib

TINY = micro_config()  # the config of the session's trained run (conftest.trained_run_and_terminal)
# That run is shared with test_cli and test_export: one worker takes the three files, so it is trained once.
pytestmark = pytest.mark.xdist_group("trained_run")
SECTIONS = ("Run summary", "Config", "Loss curves", "The data", "Reconstructions", "Prior samples",
            "Interpolation", "KL per latent dimension", "Latent traversals", "Evaluation")


@pytest.fixture
def trained(trained_run_and_terminal):
    """(run dir, what the progress bar drew) of the session's micro run, trained with --tensorboard
    (where tensorboardX is installed) on a fake terminal."""
    return trained_run_and_terminal


def _images(text: str) -> list[Image.Image]:
    """Every <img> of the page, decoded; asserts each is an inline PNG."""
    sources = re.findall(r'<img src="([^"]*)"', text)
    images = []
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        im.load()
        images.append(im)
    return images


def test_training_writes_a_self_contained_report(trained):
    run_dir, _ = trained
    text = (run_dir / run_lib.REPORT).read_text()
    for title in SECTIONS:
        assert f"<h2>{title}" in text
    for label in ("T = 0.5", "T = 0.8", "T = 1.0", "pixel space", "latent lerp", "latent slerp"):
        assert f"<th>{label}</th>" in text
    images = _images(text)
    # dataset, 2 reconstruction rows, 3 temperatures, 3 interpolations, 6 traversal rows, curves, KL
    assert len(images) == 2 + 2 + 3 + 3 + TINY.z_dim + 2
    assert all(im.width > 0 and im.height > 0 for im in images)
    # nothing to fetch or run: no script, no stylesheet or image by URL, and a CSP that forbids both
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text
    assert re.findall(r'(?:src|href)="(?!data:image/png;base64,)', text) == []
    assert f'content="{report.CSP}"' in text


def test_pictures_and_summary_come_first_and_the_config_last_collapsed(trained):
    run_dir, _ = trained
    text = (run_dir / run_lib.REPORT).read_text()
    titles = re.findall(r"<h2>([^<]*)</h2>", text)
    assert titles[0] == "Run summary" and titles[-1].startswith("Config")
    assert titles.index("Reconstructions") < titles.index("Evaluation") < len(titles) - 1
    config = text[text.index("<h2>Config"):]
    assert config.index("<details>") < config.index("<table>")  # collapsed until asked for
    # a finished run without an evaluation is not "missing" anything: a hint sits in its own section
    assert '<div class="missing">' not in text
    assert "No evaluation yet: `jaxvae evaluate RUN --out RUN/evaluation.json`" in html.unescape(text)


def test_report_numbers_are_the_runs(trained):
    run_dir, _ = trained
    text = (run_dir / run_lib.REPORT).read_text()
    summary = run_lib.read_json(run_dir / run_lib.SUMMARY)
    for key in ("reconstruction_mse", "images_per_s", "loss", "val_loss", "kl_loss"):
        assert f">{summary[key]:.6g}</td>" in text, key
    # the reconstruction MSE the page states, recomputed through the public API
    import jaxvae

    vae = jaxvae.load(run_dir)
    val = data_lib.to_model_range(data_lib.load_dataset(TINY).val[:report.PER_ROW])
    mse = sample.pixel_mse(val, vae.reconstruct(val))
    assert f"MSE of these {report.PER_ROW} in [0,1] pixels: {mse:.5f}." in text
    # the KL total: the encoder's closed-form KL summed over dims, averaged over the held-out images
    q = vae.encode(data_lib.to_model_range(data_lib.load_dataset(TINY).val[:512]))
    kl = np.mean(np.sum(0.5 * (np.exp(2 * q.log_std) + q.mean**2 - 1 - 2 * q.log_std), axis=1))
    stated = float(re.search(r"held-out images: total ([0-9.]+) nats", text).group(1))
    assert stated == pytest.approx(kl, abs=2e-3)


def test_progress_bar_shows_loss_kl_and_images_per_second(trained):
    _, terminal = trained
    assert "loss=" in terminal and "kl=" in terminal and "img_s=" in terminal
    assert f"{TINY.steps}/{TINY.steps}" in terminal
    assert train._progress(TINY, quiet=True).disable
    with pytest.MonkeyPatch.context() as mp:  # no terminal (a pipe, CI): no bar
        mp.setattr(sys, "stderr", io.StringIO())
        assert train._progress(TINY, quiet=False).disable


def _events(run_dir: Path) -> list:
    """Every Event in RUN/tensorboard (TFRecord framing: length, crc, payload, crc)."""
    from tensorboardX.proto import event_pb2

    events = []
    for file in sorted((run_dir / run_lib.TENSORBOARD).glob("events.out.tfevents.*")):
        data, i = file.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
            i += 12 + n + 4
    return events


@pytest.mark.skipif(not HAS_TENSORBOARDX, reason="tensorboardX (the tensorboard extra) is not installed")
def test_tensorboard_events_hold_the_metrics_and_the_pictures(trained):
    run_dir, _ = trained
    scalars, images = {}, {}
    for event in _events(run_dir):
        for value in event.summary.value:
            if value.HasField("image"):
                images[value.tag] = value.image
            else:
                scalars[(value.tag, event.step)] = value.simple_value
    records = run_lib.read_metrics(run_dir)
    assert records
    for r in records:
        for key in ("loss", "kl_loss", "reconstruction_loss", "x_std", "z_std", "images_per_s"):
            assert scalars[(f"train/{key}", r["step"])] == pytest.approx(r[key], rel=1e-6)
        if "val_loss" in r:
            assert scalars[("valid/loss", r["step"])] == pytest.approx(r["val_loss"], rel=1e-6)
    assert set(images) == {name.removesuffix(".png") for name in run_lib.PICTURES}
    with Image.open(io.BytesIO(images["curves"].encoded_image_string)) as im:
        assert im.size == (images["curves"].width, images["curves"].height)


def test_tensorboard_without_tensorboardx_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # makes `import tensorboardX` fail
    out = tmp_path / "run"
    assert cli.main(["train", "--preset", "tiny", "--tensorboard", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensorboardX" in err[0] and "pip install" in err[0]
    assert not out.exists()


def test_a_failing_report_never_costs_the_run(trained, monkeypatch):
    def broken(run):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report, "write_report", broken)
    with pytest.warns(UserWarning, match="disk on fire"):
        train._write_report(trained[0])


def test_partial_run_without_metrics_summary_or_data(trained, tmp_path):
    """Still training (no summary), metrics not flushed yet, and the data moved: what exists is shown."""
    run_dir = tmp_path / "partial"
    shutil.copytree(trained[0], run_dir)
    for name in (run_lib.METRICS, run_lib.SUMMARY, run_lib.REPORT):
        (run_dir / name).unlink()
    config = run_lib.read_json(run_dir / run_lib.CONFIG)
    run_lib.write_json(run_dir / run_lib.CONFIG, {**config, "data": "/nonexistent/folder-that-moved"})
    out = report.write_report(run_dir)
    text = out.read_text()
    missing = re.search(r'<div class="missing">(.*?)</div>', text, re.S).group(1)
    assert "no summary.json" in missing and "no metrics.jsonl" in missing and "folder-that-moved" in missing
    assert "<h2>Prior samples" in text and "<h2>Config" in text  # the model needs no data for these
    assert "<h2>Reconstructions" not in text and "<h2>Loss curves" not in text
    assert len(_images(text)) == 3


def test_run_without_checkpoint_with_evaluation_and_hostile_strings(trained, tmp_path, capsys):
    """An odd run name, odd evaluation keys, no checkpoint: escaped, tabled, and said."""
    run_dir = tmp_path / 'run <b>&"x'
    run_dir.mkdir()
    for name in (run_lib.CONFIG, run_lib.META, run_lib.METRICS):
        shutil.copy(trained[0] / name, run_dir / name)
    evaluation = {"test": {"elbo_nats": -123.25, "bits_per_dim": 1.5}, "<script>alert(1)</script>": "a&b",
                  "samples": list(range(20))}
    (run_dir / "evaluation.json").write_text(json.dumps(evaluation))
    out = tmp_path / "elsewhere" / "r.html"
    assert cli.main(["report", str(run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert not (run_dir / run_lib.REPORT).exists()  # --out is the one write
    text = out.read_text()
    assert "no checkpoint yet" in text and "<h2>Loss curves" in text
    assert "<script>" not in text and html.escape("<script>alert(1)</script>") in text
    assert html.escape('run <b>&"x') in text and "<b>&" not in text
    assert "<th>test.elbo_nats</th>" in text and ">-123.25</td>" in text and ">a&amp;b</td>" in text
    assert "[20 values]" in text
    assert "<h2>The data" in text  # needs no checkpoint
    assert len(_images(text)) == 1 + 2  # the curves, two rows of training images


def test_a_directory_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(run_lib.RunError, match="not a jaxvae run"):
        report.write_report(tmp_path)
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxvae: error:") and "not a jaxvae run" in err[0]
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["report", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- in a real browser ------------------------------------------------------------------------------------

def _report_check():
    path = Path(__file__).resolve().parents[1] / "scripts" / "report_check.py"
    spec = importlib.util.spec_from_file_location("report_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Chromium gets the DevTools pipe through pass_fds, so subprocess forks (then execs at once); JAX warns on any fork.
BROWSER = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")


@pytest.fixture(scope="module")
def chromium():
    check = _report_check()
    binary = check.find_chromium()
    if binary is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; `make test` tries to)")
    return check, binary


@BROWSER
def test_report_in_headless_chromium(trained, chromium, tmp_path):
    check, binary = chromium
    shot = tmp_path / "shot.png"
    result = check.check(trained[0] / run_lib.REPORT, binary, shot)
    assert result["problems"] == []
    assert result["images"] == 2 + 2 + 3 + 3 + TINY.z_dim + 2 and result["sections"] == len(SECTIONS)
    assert result["external"] == [] and result["failed"] == [] and result["errors"] == []
    assert result["scripts"] == 0 and result["inked"] > 0.05
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height > 2000


@BROWSER
def test_the_browser_check_catches_a_broken_page(chromium, tmp_path):
    """The check itself must fail a page that fetches from the network and has an undecodable image."""
    check, binary = chromium
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png" alt="remote">'
                    '<img src="data:image/png;base64,bm90IGEgcG5n" alt="garbage"></body></html>')
    problems = check.check(page, binary)["problems"]
    assert any(p.startswith("request to http://127.0.0.1:9") for p in problems)
    assert any("does not decode: garbage" in p for p in problems)
    assert any("blank" in p for p in problems)


def test_a_run_at_a_path_that_is_not_utf8_gets_its_report(tmp_path, capsys):
    """Undecodable bytes in the run's path (kept as surrogates by os.fsdecode): the checkpoints are
    read (TensorStore takes UTF-8 paths only), the report is written and named on stdout."""
    from conftest import micro_config, untrained_run

    run = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/r\xff\xfeun"))
    untrained_run(run, micro_config())
    assert cli.main(["report", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "wrote " in out and "report.html" in out and "damaged" not in err
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "r\ufffd\ufffdun" in text and "Prior samples" in text
