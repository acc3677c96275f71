"""A tiny training run on a folder of generated JPEGs, through the CLI, with an implicit cache."""

import json

import numpy as np
import pytest
from PIL import Image
from test_cli import MICRO_FLAGS

from jaxvae import cli
from jaxvae import run as run_lib
from jaxvae.data.shapes import make_shapes


@pytest.mark.slow
def test_train_on_a_folder_of_jpegs(tmp_path):
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    images, _ = make_shapes(48, 40, seed=5)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img_{i:03d}.jpg", quality=90)
    (folder / "notes.txt").write_text("not an image")
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["train", *MICRO_FLAGS, "--data", str(tmp_path / "photos"), "--cache-dir", str(cache),
            "--val-fraction", "0.25", "--out", str(out)]
    assert cli.main(argv) == 0
    assert run_lib.read_json(out / "summary.json")["steps"] == 12
    manifests = list(cache.rglob("manifest.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    assert np.load(manifests[0].parent / "images.npy", mmap_mode="r").shape == (48, 16, 16, 3)
    assert len(manifest["files"]) == manifest["count"] == 48


@pytest.mark.slow
def test_a_tiny_folder_is_checked_before_training(tmp_path, capsys):
    """20 images at --val-fraction 0.05 hold out one: the pictures need two, so training is refused
    up front (it used to crash after training), saying which fraction works; that one trains."""
    folder = tmp_path / "few"
    folder.mkdir()
    for i, img in enumerate(make_shapes(20, 16, seed=2)[0]):
        Image.fromarray(img).save(folder / f"img_{i:02d}.png")
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["train", *MICRO_FLAGS, "--data", str(folder), "--cache-dir", str(cache), "--out", str(out)]
    for fraction, held in (("0.05", 1), ("0", 0)):
        assert cli.main([*argv, "--val-fraction", fraction]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the folder's "preparing" note
        assert err == (f"jaxvae: error: --val-fraction {fraction} of 20 images holds out {held}: training needs at "
                       "least 2 held-out (validation loss, best checkpoint, pictures); --val-fraction 0.08 gives 2, "
                       "or give --val-data"), err
        assert not out.exists()
    assert cli.main([*argv, "--val-fraction", "0.08", "--steps", "4"]) == 0
    assert (out / "interpolation.png").is_file()
