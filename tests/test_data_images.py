"""One image file -> one array: modes, EXIF, crops, bad files; and the folder search with its symlinks."""

import os

import numpy as np
from PIL import Image

from jaxvae.data.images import ImageSettings, crop_box, decode_image, list_images


def decode(path, size=4, channels=3, **kw):
    pixels, upscaled, reason = decode_image(str(path), ImageSettings(size, channels, **kw))
    assert reason is None, reason
    return pixels, upscaled


def reason_for(path, **kw):
    pixels, _, reason = decode_image(str(path), ImageSettings(8, 3, **kw))
    assert pixels is None
    return reason


# --- modes ----------------------------------------------------------------------------------------

def test_every_mode_is_converted_explicitly(tmp_path):
    cases = {
        "l.png": (Image.new("L", (4, 4), 100), (100, 100, 100)),
        "one.png": (Image.new("1", (4, 4), 1), (255, 255, 255)),
        "i16.png": (Image.fromarray(np.full((4, 4), 257 * 100, np.uint16)), (100, 100, 100)),
        "la.png": (Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),  # transparent -> white
        "rgba.png": (Image.new("RGBA", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),
        "rgba_half.webp": (Image.new("RGBA", (4, 4), (0, 0, 0, 51)), (204, 204, 204)),  # 255 * (1 - 0.2)
        "rgb.bmp": (Image.new("RGB", (4, 4), (10, 20, 30)), (10, 20, 30)),
    }
    for name, (img, expected) in cases.items():
        img.save(tmp_path / name, **({"lossless": True} if name.endswith(".webp") else {}))
        pixels, _ = decode(tmp_path / name)
        assert pixels.shape == (4, 4, 3) and pixels.dtype == np.uint8
        np.testing.assert_allclose(pixels[0, 0], expected, atol=1, err_msg=name)


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p.save(tmp_path / "opaque.png")
    p.save(tmp_path / "see_through.png", transparency=1)
    np.testing.assert_array_equal(decode(tmp_path / "opaque.png")[0][0, 0], (200, 10, 10))
    np.testing.assert_array_equal(decode(tmp_path / "see_through.png", background="#0000ff")[0][0, 0],
                                  (0, 0, 255))


def test_cmyk_jpeg_and_grayscale_channels(tmp_path):
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    np.testing.assert_allclose(decode(tmp_path / "cmyk.jpg")[0][0, 0], (255, 255, 255), atol=3)
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red.png")
    gray, _ = decode(tmp_path / "red.png", channels=1)
    assert gray.shape == (4, 4, 1) and gray[0, 0, 0] == 76  # 299 * 255 / 1000
    Image.new("L", (4, 4), 90).save(tmp_path / "g.png")
    assert decode(tmp_path / "g.png", channels=1)[0][0, 0, 0] == 90  # grayscale stays 1 channel


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    np.testing.assert_allclose(decode(tmp_path / "a.gif")[0][0, 0], (255, 0, 0), atol=2)


# --- geometry -------------------------------------------------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((10, 20, 3), np.uint8)  # (H, W): left half red, right half blue
    img[:, :10, 0] = 255
    img[:, 10:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180
    Image.fromarray(img).save(tmp_path / "r.jpg", exif=exif, quality=95)
    pixels, _ = decode(tmp_path / "r.jpg", size=10)
    assert pixels[5, 1, 2] > 200 and pixels[5, 1, 0] < 50  # left is blue now
    assert pixels[5, 8, 0] > 200 and pixels[5, 8, 2] < 50


def test_centre_crop_then_resize(tmp_path):
    img = np.zeros((10, 30, 3), np.uint8)  # red sides, green central 10x10 square
    img[..., 0] = 255
    img[:, 10:20] = (0, 255, 0)
    Image.fromarray(img).save(tmp_path / "wide.png")
    pixels, upscaled = decode(tmp_path / "wide.png", size=10)
    np.testing.assert_array_equal(pixels, np.broadcast_to(np.array([0, 255, 0], np.uint8), (10, 10, 3)))
    assert not upscaled
    pixels, upscaled = decode(tmp_path / "wide.png", size=16)
    assert upscaled and pixels.shape == (16, 16, 3)


def test_celeba_crop_is_the_central_140_square(tmp_path):
    assert crop_box(178, 218, "celeba") == (19, 39, 159, 179)
    assert crop_box(178, 218, "center") == (0, 20, 178, 198)
    img = np.zeros((218, 178, 3), np.uint8)
    img[39:179, 19:159] = (0, 255, 0)
    Image.fromarray(img).save(tmp_path / "face.png")
    pixels, _ = decode(tmp_path / "face.png", size=140, crop="celeba")
    assert (pixels == (0, 255, 0)).all()


def test_large_jpeg_decoded_at_reduced_scale_matches_full_decode(tmp_path):
    y, x = np.mgrid[0:512, 0:512]
    img = np.stack([x // 2, y // 2, (x + y) // 4], -1).astype(np.uint8)  # smooth gradients
    Image.fromarray(img).save(tmp_path / "big.jpg", quality=95)
    fast, _ = decode(tmp_path / "big.jpg", size=32)  # drafted at 1/8 -> 64 px, then Lanczos
    full = np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.LANCZOS))
    assert np.abs(fast.astype(int) - full).mean() < 3


# --- bad files ------------------------------------------------------------------------------------

def test_bad_files_give_reasons(tmp_path, monkeypatch):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, not a png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "good.jpg")
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    Image.new("L", (400, 400)).save(tmp_path / "bomb.png")
    assert reason_for(tmp_path / "zero.jpg") == "empty file (0 bytes)"
    assert reason_for(tmp_path / "text.png") == "not an image (no known image format)"
    assert reason_for(tmp_path / "cut.jpg").startswith("truncated or corrupt")
    assert reason_for(tmp_path / "bomb.png", max_pixels=10_000) == (
        "decompression bomb: 400x400 = 160,000 pixels is more than the limit of 10,000 (--max-image-pixels)")
    assert reason_for(tmp_path / "missing.png") == "unreadable: No such file or directory"  # vanished

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Image, "open", deny)  # root can read anything, so simulate the failure
    assert reason_for(tmp_path / "good.jpg") == "unreadable: Permission denied"


# --- the folder search ----------------------------------------------------------------------------

def test_list_images_recursive_sorted_with_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    formats = {"PNG": "PNG", "jpeg": "JPEG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "jpg": "JPEG"}
    for rel in ("b/deep/x.PNG", "a/y.jpeg", "z.gif", "w.webp", "v.bmp", "u.jpg"):
        Image.new("RGB", (2, 2)).save(root / rel, format=formats[rel.split(".")[-1]])
    (root / "notes.txt").write_text("ignored")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (2, 2)).save(outside)
    os.symlink(outside, root / "out.png")  # leaves the root
    os.symlink(root / "z.gif", root / "inside.gif")  # stays inside: kept
    os.symlink(root, root / "b" / "loop")  # a directory loop
    os.symlink(root / "nowhere.png", root / "broken.png")
    os.symlink(root / "self.png", root / "self.png")  # a link to itself
    found, skipped, ignored = list_images(str(root))
    assert [f.path for f in found] == ["a/y.jpeg", "b/deep/x.PNG", "inside.gif", "u.jpg", "v.bmp", "w.webp",
                                       "z.gif"]
    reasons = dict(skipped)
    assert reasons["out.png"] == f"symlink points outside the root, to {outside}"
    assert reasons["b/loop"] == "directory already searched (a symlink loop or duplicate)"
    assert reasons["broken.png"].startswith("broken symlink or symlink loop")
    assert reasons["self.png"].startswith("broken symlink or symlink loop")
    assert ignored == 1
