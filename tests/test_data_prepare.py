"""The prepared cache: manifest, bad files, atomic writes, reuse and rebuild; the two commands."""

import hashlib
import json
import os

import numpy as np
import pytest
import tyro
from PIL import Image

from jaxvae.cli.data import PrepareArgs, ShowDataArgs, run_prepare, run_show_data
from jaxvae.config import ConfigError
from jaxvae.data import DataOptions, load_images
from jaxvae.data import decode_worker as dw
from jaxvae.data import prepare as prep
from jaxvae.data.images import ImageSettings, decode_image
from jaxvae.data.prepare import ensure_cache, open_cache, prepare_folder

S = ImageSettings(size=8, channels=3)


def make_folder(root, n=6, size=(12, 10), seed=0):
    """n random RGB JPEGs and PNGs under root (some in a subfolder)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = root / ("sub" if i % 2 else "") / f"img{i}.{'png' if i % 3 == 0 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(path)
    return root


def leftovers(folder):
    return [p for p in os.listdir(folder) if ".tmp-" in p]


def test_prepare_writes_images_and_manifest(tmp_path):
    src = make_folder(tmp_path / "src")
    Image.new("RGB", (4, 4)).save(src / "small.png")  # smaller than S: upscaled
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (src / "readme.txt").write_text("not an image")
    m = prepare_folder(str(src), str(tmp_path / "cache"), S, quiet=True)
    images, manifest = open_cache(str(tmp_path / "cache"))
    assert manifest == m
    assert images.shape == (7, 8, 8, 3) and images.dtype == np.uint8 and isinstance(images, np.memmap)
    assert m["files"] == sorted(m["files"]) and len(m["files"]) == 7 and "sub/img1.jpg" in m["files"]
    assert (m["count"], m["found"], m["skipped_count"], m["upscaled_count"], m["ignored_other_files"]) == (
        7, 8, 1, 1, 1)
    assert m["skipped"] == [{"path": "broken.jpg", "reason": m["skipped"][0]["reason"]}]
    assert m["source"] == os.path.realpath(src)
    assert m["content_hash"] == "sha256:" + hashlib.sha256(np.asarray(images).tobytes()).hexdigest()
    for row, rel in zip(images, m["files"], strict=True):  # rows follow the sorted file list
        np.testing.assert_array_equal(row, decode_image(str(src / rel), S)[0])


def test_skip_prints_one_line_with_the_count(tmp_path, capsys):
    src = make_folder(tmp_path / "src", n=3)
    (src / "zero.png").write_bytes(b"")
    (src / "text.jpg").write_text("x")
    prepare_folder(str(src), str(tmp_path / "cache"), S)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("jaxvae:")]
    assert len(err) == 1 and err[0].startswith("jaxvae: skipped 2 bad file(s) of 5 in")


def test_on_bad_image_error_stops_and_writes_nothing(tmp_path):
    src = make_folder(tmp_path / "src", n=3)
    (src / "zz_truncated.png").write_bytes((src / "img0.png").read_bytes()[:60])
    with pytest.raises(ConfigError, match=r"bad image .*zz_truncated.png: truncated or corrupt"):
        prepare_folder(str(src), str(tmp_path / "cache"), S, on_bad_image="error", quiet=True)
    assert not (tmp_path / "cache").exists() and not leftovers(tmp_path)


def test_a_symlink_out_of_the_root_is_a_bad_file_too(tmp_path):
    src = make_folder(tmp_path / "src", n=2)
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere.png")
    os.symlink(tmp_path / "elsewhere.png", src / "link.png")
    m = prepare_folder(str(src), str(tmp_path / "c1"), S, quiet=True)
    assert m["count"] == 2 and m["skipped"][0]["path"] == "link.png"
    with pytest.raises(ConfigError, match=r"bad file .*link.png: symlink points outside the root"):
        prepare_folder(str(src), str(tmp_path / "c2"), S, on_bad_image="error", quiet=True)


def test_empty_folders_and_folders_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no images in .*empty: expected jpg, jpeg, png, webp, bmp, gif "
                                          r"files \(searched recursively\), found nothing"):
        prepare_folder(str(tmp_path / "empty"), str(tmp_path / "c"), S)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="found 1 other files"):
        prepare_folder(str(tmp_path / "docs"), str(tmp_path / "c"), S)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match="no readable images in .*bad: all 1 failed, e.g. a.jpg: empty"):
        prepare_folder(str(tmp_path / "bad"), str(tmp_path / "c"), S, quiet=True)
    with pytest.raises(ConfigError, match="no such folder"):
        prepare_folder(str(tmp_path / "missing"), str(tmp_path / "c"), S)
    assert not (tmp_path / "c").exists() and not leftovers(tmp_path)


def test_worker_processes_give_the_same_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "MIN_IMAGES_FOR_POOL", 8)
    src = make_folder(tmp_path / "src", n=30, size=(10, 10))
    (src / "bad.png").write_bytes(b"nope")
    one = prepare_folder(str(src), str(tmp_path / "one"), S, workers=1, quiet=True)
    two = prepare_folder(str(src), str(tmp_path / "two"), S, workers=2, quiet=True)
    assert one["content_hash"] == two["content_hash"] and one["skipped"] == two["skipped"]
    assert sorted(os.listdir(tmp_path / "two")) == ["images.npy", "manifest.json"]
    with pytest.raises(ConfigError, match=r"bad image .*bad.png"):  # stops the workers, writes nothing
        prepare_folder(str(src), str(tmp_path / "three"), S, workers=2, on_bad_image="error", quiet=True)
    assert not (tmp_path / "three").exists() and not leftovers(tmp_path)


def test_a_dying_worker_loses_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prep, "MIN_IMAGES_FOR_POOL", 8)
    src = make_folder(tmp_path / "src", n=12, size=(10, 10))
    good = prepare_folder(str(src), str(tmp_path / "good"), S, workers=1, quiet=True)
    monkeypatch.setattr(dw.sys, "executable", "/bin/false")  # every worker exits at once
    again = prepare_folder(str(src), str(tmp_path / "again"), S, workers=2, quiet=True)
    assert again["content_hash"] == good["content_hash"]
    assert "worker failed (exit codes [1, 1]); decoding its remaining 12" in capsys.readouterr().err


def test_training_cache_is_reused_then_rebuilt_when_the_folder_changes(tmp_path, monkeypatch):
    src = make_folder(tmp_path / "src", n=4)
    builds = []
    real_prepare = prep.prepare_folder
    monkeypatch.setattr(prep, "prepare_folder", lambda *a, **k: builds.append(a) or real_prepare(*a, **k))
    kw = {"cache_dir": str(tmp_path / "caches"), "quiet": True}
    first = ensure_cache(str(src), S, **kw)
    assert ensure_cache(str(src), S, **kw) == first and len(builds) == 1  # unchanged: reused
    other = ensure_cache(str(src), ImageSettings(16, 3), **kw)  # other settings: own cache, beside the first
    assert other != first and open_cache(other)[0].shape == (4, 16, 16, 3) and open_cache(first)[0].shape[1] == 8
    builds.clear()
    Image.new("RGB", (10, 10), (9, 9, 9)).save(src / "new.png")  # the folder changes
    assert ensure_cache(str(src), S, **kw) == first and len(builds) == 1
    images, manifest = open_cache(first)
    assert manifest["count"] == 5 and "new.png" in manifest["files"]
    os.utime(src / "new.png", ns=(1, 1))  # touched: rebuilt again
    ensure_cache(str(src), S, **kw)
    assert len(builds) == 2 and not leftovers(tmp_path / "caches")


def test_reused_cache_with_skipped_files_still_fails_under_error(tmp_path):
    src = make_folder(tmp_path / "src", n=2)
    (src / "zero.jpg").write_bytes(b"")
    kw = {"cache_dir": str(tmp_path / "caches"), "quiet": True}
    ensure_cache(str(src), S, **kw)
    with pytest.raises(ConfigError, match=r"bad image .*zero.jpg: empty file"):
        ensure_cache(str(src), S, on_bad_image="error", **kw)


def test_damaged_or_unwritable_caches_are_one_line_errors(tmp_path):
    src = make_folder(tmp_path / "src", n=2)
    prepare_folder(str(src), str(tmp_path / "c"), S, quiet=True)
    (tmp_path / "c" / "images.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(ConfigError, match="the cache .* is damaged .*: prepare it again"):
        open_cache(str(tmp_path / "c"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="could not prepare .*file/c"):
        prepare_folder(str(src), str(tmp_path / "file" / "c"), S, quiet=True)


def test_prepare_command_through_tyro(tmp_path, capsys):
    src = make_folder(tmp_path / "src", n=3)
    argv = [str(src), "--out", str(tmp_path / "c"), "--image-size", "16", "--quiet"]
    args = tyro.cli(PrepareArgs, args=argv)
    assert run_prepare(args) == 0
    assert "jaxvae: wrote 3 images of 16x16x3" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="already holds a prepared cache: choose another --out or pass --overwrite"):
        run_prepare(args)
    assert run_prepare(tyro.cli(PrepareArgs, args=[str(src), "--out", str(tmp_path / "c"), "--image-size",
                                                  "16", "--channels", "1", "--overwrite", "--quiet"])) == 0
    cache = load_images(str(tmp_path / "c"), DataOptions(image_size=16, channels=1))
    assert cache.shape == (3, 16, 16, 1)
    with pytest.raises(ConfigError, match="holds 16-px 1-channel images, but --image-size 32 --channels 3"):
        load_images(str(tmp_path / "c"), DataOptions(image_size=32))
    with pytest.raises(ConfigError, match="is already a prepared cache"):
        run_prepare(PrepareArgs(src=str(tmp_path / "c"), out=str(tmp_path / "d")))
    with pytest.raises(ConfigError, match="unknown on_bad_image"):
        run_prepare(PrepareArgs(src=str(src), out=str(tmp_path / "d"), on_bad_image="maybe"))


def test_prepare_an_array_source(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "digits.npy", images)
    run_prepare(PrepareArgs(src=str(tmp_path / "digits.npy"), out=str(tmp_path / "c"), image_size=32,
                            quiet=True))
    direct = load_images(str(tmp_path / "digits.npy"), DataOptions(image_size=32))
    np.testing.assert_array_equal(load_images(str(tmp_path / "c"), DataOptions(image_size=32)), direct)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["upscaled_count"] == 5 and manifest["kind"] == "array"


def test_celeba_source_uses_the_face_crop(tmp_path):
    img = np.zeros((218, 178, 3), np.uint8)
    img[39:179, 19:159] = (0, 255, 0)
    (tmp_path / "img_align_celeba").mkdir()
    Image.fromarray(img).save(tmp_path / "img_align_celeba" / "000001.png")
    opts = DataOptions(image_size=8, cache_dir=str(tmp_path / "caches"))
    faces = load_images(f"celeba:{tmp_path / 'img_align_celeba'}", opts, quiet=True)
    np.testing.assert_array_equal(faces[0], np.full((8, 8, 3), (0, 255, 0)))  # nothing from outside the box
    from_parent = load_images(f"celeba:{tmp_path}", opts, quiet=True)  # the dataset root works too
    np.testing.assert_array_equal(from_parent, faces)
    plain = load_images(str(tmp_path / "img_align_celeba"), opts, quiet=True)
    assert plain[0, 0, 0, 1] < 200  # the plain centre square reaches the black border


def test_show_data_writes_a_grid(tmp_path):
    out = tmp_path / "figs" / "grid.png"
    args = tyro.cli(ShowDataArgs, args=["--data", "shapes", "--out", str(out), "--image-size", "16",
                                        "--count", "10"])
    assert run_show_data(args) == 0
    grid = Image.open(out)
    assert grid.size == (4 * (64 + 2) + 2, 3 * (64 + 2) + 2)  # 4 x 3 cells of 16 px at 4x, 2 px gaps
    with pytest.raises(ConfigError, match="--out must name a .png file"):
        run_show_data(ShowDataArgs(out=str(tmp_path / "grid.jpg")))


def test_overwrite_never_replaces_a_user_file_or_folder(tmp_path):
    """--overwrite replaces only a cache: a user's file or non-empty folder survives, one line each."""
    src = make_folder(tmp_path / "src", n=3)
    user_file = tmp_path / "f.txt"
    user_file.write_text("data")
    with pytest.raises(ConfigError, match="exists and is not a folder; jaxvae does not replace it, even with"):
        run_prepare(PrepareArgs(src=str(src), out=str(user_file), image_size=8, overwrite=True, quiet=True))
    assert user_file.read_text() == "data"
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a jaxvae cache .it holds notes.txt.; jaxvae does not replace it"):
        run_prepare(PrepareArgs(src=str(src), out=str(folder), image_size=8, overwrite=True, quiet=True))
    assert os.listdir(folder) == ["notes.txt"]
    # a cache with a user's file inside is not only jaxvae's either
    assert run_prepare(PrepareArgs(src=str(src), out=str(tmp_path / "c"), image_size=8, quiet=True)) == 0
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a jaxvae cache"):
        run_prepare(PrepareArgs(src=str(src), out=str(tmp_path / "c"), image_size=8, overwrite=True, quiet=True))
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="--out must not be empty"):
        run_prepare(PrepareArgs(src=str(src), out="", image_size=8, quiet=True))
