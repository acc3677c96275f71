"""`--data dsprites` (dSprites' factor grid drawn on demand), shapes.render, and .npz factors."""

import math

import numpy as np
import pytest
from conftest import micro_config

from jaxvae import cli
from jaxvae import data as data_lib
from jaxvae.config import ConfigError
from jaxvae.data import Rows, dsprites, shapes
from jaxvae.data.sources import parse_source


def masks(factors):
    return dsprites.render(np.asarray(factors))[..., 0] > 0  # (n, 64, 64) bool


def one(shape, scale=5, orientation=0, x=15, y=15):
    return masks([[shape, scale, orientation, x, y]])[0]


def test_the_full_factorial_grid():
    images = dsprites.DSpritesImages()
    assert len(images) == 737_280 == 3 * 6 * 40 * 32 * 32 and images.shape == (737_280, 64, 64, 1)
    f = images.factors()  # (N, 5): every setting exactly once, in a shuffled order
    assert f.shape == (737_280, 5)
    assert len(np.unique(np.ravel_multi_index(f.T.astype(np.int64), dsprites.FACTOR_SIZES))) == 737_280
    for j, k in enumerate(dsprites.FACTOR_SIZES):
        assert np.array_equal(np.bincount(f[:, j]), np.full(k, 737_280 // k))
    assert not np.array_equal(f[:1000, 0], np.sort(f[:1000, 0]))  # rows are a random sample of the grid


def test_indexing_draws_the_rows_factors():
    images = dsprites.DSpritesImages()
    rows = np.array([3, 700_000, 12])
    batch = images[rows]
    assert batch.shape == (3, 64, 64, 1) and batch.dtype == np.uint8
    assert set(np.unique(batch)) == {0, 255}  # binary
    assert np.array_equal(batch, dsprites.render(images.factors(rows)))
    assert np.array_equal(images[700_000], batch[1]) and np.array_equal(images[2:4], images[np.array([2, 3])])


def test_distinct_settings_draw_distinct_images_up_to_the_shapes_symmetries():
    """Every (shape, scale, orientation) distinct modulo symmetry at four positions, and all 1024
    positions of three sprites: no two images alike. (The whole grid was checked once: 430,080 settings,
    430,080 distinct images.) The square repeats every 10 orientation steps and the ellipse every 20."""
    rng = np.random.default_rng(0)
    settings = [[s, k, o, x, y] for s in range(3) for k in range(6) for o in range(dsprites.SYMMETRY_STEPS[s])
                for x, y in rng.integers(0, 32, (4, 2))]
    settings += [[s, k, o, x, y] for s, k, o in ((0, 0, 3), (1, 2, 17), (2, 0, 39)) for x in range(32)
                 for y in range(32)]
    f = np.array(settings)
    keys = np.ravel_multi_index(f.T, dsprites.FACTOR_SIZES)
    f = f[np.unique(keys, return_index=True)[1]]  # distinct settings
    packed = np.packbits(masks(f).reshape(len(f), -1), axis=1)
    assert len(np.unique(packed, axis=0)) == len(f)
    for shape, period in ((0, 10), (1, 20)):
        assert np.array_equal(one(shape, 0, 3), one(shape, 0, 3 + period))
    assert not np.array_equal(one(2, 0, 3), one(2, 0, 23))  # the heart has no symmetry


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_pixel_area_grows_with_the_square_of_the_scale(shape):
    areas = np.array([one(shape, k, 7).sum() for k in range(6)])
    assert np.all(np.diff(areas) > 0)
    scale = 0.5 + 0.1 * np.arange(6)
    assert areas / areas[-1] == pytest.approx(scale**2, rel=0.1)  # area ~ scale^2, up to the pixel grid


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_a_quarter_turn_is_the_image_rotated(shape):
    """Centred in the image, a sprite at angle a + 90 degrees is np.rot90 (counter-clockwise) of it at a."""
    for degrees in (9.0, 33.0, 200.0):
        a = np.deg2rad(np.array([degrees]))
        centred = dict(scale=np.array([0.8]), x=np.array([0.5]), y=np.array([0.5]))
        assert np.array_equal(np.rot90(dsprites.draw(shape, angle=a, **centred)[0]),
                              dsprites.draw(shape, angle=a + np.pi / 2, **centred)[0])


def test_orientation_turns_the_ellipse_and_the_square():
    def extent(mask):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        return cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1  # width, height

    w, h = extent(one(1, 5, 0))
    assert w > 1.8 * h  # semi-axes 2:1, long axis horizontal at orientation 0
    assert extent(one(1, 5, 10)) == pytest.approx((h, w), abs=1)  # 90 degrees: standing up
    side = extent(one(0, 5, 0))[0]
    assert extent(one(0, 5, 5))[0] == pytest.approx(side * math.sqrt(2), abs=2)  # 45 degrees: a diamond
    # counter-clockwise on screen: at 45 degrees the ellipse's right end is its top end
    tilted = one(1, 5, 5)
    rows, cols = np.nonzero(tilted)
    assert rows[np.argmax(cols)] < rows[np.argmin(cols)]


def test_position_moves_the_sprite_right_and_down():
    def centre(mask):
        rows, cols = np.nonzero(mask)
        return cols.mean(), rows.mean()

    xs = [centre(one(2, 3, 0, x, 10))[0] for x in range(32)]
    ys = [centre(one(2, 3, 0, 10, y))[1] for y in range(32)]
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) > 0)
    assert xs[-1] - xs[0] == pytest.approx(0.5 * 64, abs=1)  # centres span [0.25, 0.75] of the side


def test_dsprites_as_a_data_source():
    assert parse_source("dsprites").kind == "dsprites"
    c = micro_config(data="dsprites", channels=1, image_size=64, patch_size=16)
    ds = data_lib.load_dataset(c)
    assert isinstance(ds.train, Rows) and isinstance(ds.val, Rows)  # views: nothing drawn until indexed
    assert len(ds.train) + len(ds.val) == 737_280 and len(ds.val) == round(0.05 * 737_280)
    assert ds.train_factors.shape == (len(ds.train), 5) and ds.val_factors.shape == (len(ds.val), 5)
    assert np.array_equal(ds.val[:4], dsprites.render(ds.val_factors[:4]))  # the factors come with the images
    assert np.array_equal(ds.train[np.array([5, 9])], dsprites.render(ds.train_factors[[5, 9]]))
    small = data_lib.load_dataset(c.replace(image_size=16, patch_size=4))
    assert small.train[0].shape == (16, 16, 1)


def test_dsprites_needs_one_channel_and_is_never_prepared(tmp_path, capsys):
    with pytest.raises(ConfigError, match="dsprites images are binary, 1 channel: pass --channels 1"):
        data_lib.load_dataset(micro_config(data="dsprites"))
    assert cli.main(["prepare", "dsprites", "--channels", "1", "--out", str(tmp_path / "c")]) == 2
    assert "dsprites is drawn on demand" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_show_data_draws_a_dsprites_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert cli.main(["show-data", "--data", "dsprites", "--channels", "1", "--count", "9", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shapes_render_holds_factors_fixed_and_varies_them():
    f = np.array([[1, 3, 2, x, 4] for x in range(8)])
    a, b = shapes.render(f, 32, seed=3), shapes.render(f, 32, seed=3)
    assert a.shape == (8, 32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)  # deterministic
    # the shape is where a pixel differs from the background (the corner): it moves right with x
    shape_pixels = np.abs(a.astype(int) - a[:, :1, :1].astype(int)).sum(-1) > 30  # (8, 32, 32)
    centres = [np.nonzero(m)[1].mean() for m in shape_pixels]
    assert np.all(np.diff(centres) > 0)
    gray = shapes.render(f[:2], 16, channels=1)
    assert gray.shape == (2, 16, 16, 1)
    with pytest.raises(ValueError, match="must lie in"):
        shapes.render(np.array([[3, 0, 0, 0, 0]]), 16)
    truth = shapes.Shapes(16, 1)
    drawn = truth.observations(truth.sample_factors(5, np.random.default_rng(0)), np.random.default_rng(1))
    assert drawn.shape == (5, 16, 16, 1)


def test_an_npz_carries_its_factors(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    factors = np.stack([np.arange(40) % 4, np.arange(40) // 4 % 2], axis=-1)
    np.savez(tmp_path / "d.npz", images=images, factors=factors)  # no --data-key needed beside `factors`
    ds = data_lib.load_dataset(micro_config(data=str(tmp_path / "d.npz"), val_fraction=0.25))
    assert len(ds.train) == 30 and len(ds.val) == 10
    for split, f in ((ds.train, ds.train_factors), (ds.val, ds.val_factors)):
        rows = [int(np.flatnonzero((images == x).all((1, 2, 3)))[0]) for x in split]
        assert np.array_equal(f, factors[rows])  # each image's own factors
    truth = data_lib.ground_truth(str(tmp_path / "d.npz"), data_lib.DataOptions(image_size=16))
    assert truth.factor_sizes == (4, 2)
    np.savez(tmp_path / "short.npz", images=images, factors=factors[:39])
    with pytest.raises(ConfigError, match="its factors array has 39 rows but there are 40 images"):
        data_lib.load_dataset(micro_config(data=str(tmp_path / "short.npz")))
    np.savez(tmp_path / "float.npz", images=images, factors=factors + 0.25)
    with pytest.raises(ConfigError, match="non-integer values"):
        data_lib.load_dataset(micro_config(data=str(tmp_path / "float.npz")))
    np.save(tmp_path / "plain.npy", images)
    assert data_lib.ground_truth(str(tmp_path / "plain.npy"), data_lib.DataOptions(image_size=16)) is None


def test_two_colour_r2_against_closed_forms():
    """Two colours: 1. A flat image: 1. A horizontal ramp through all 256 values: 2-means splits it in
    halves, each with a quarter of the variance (a uniform's variance scales with its width squared), so
    R^2 = 3/4 up to the 8-bit grid. make_shapes' images: above 0.9 (only the anti-aliased edges)."""
    two = np.zeros((1, 16, 16, 3), np.uint8)
    two[0, 4:9, 3:12] = (200, 30, 90)
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, None, :, None], (1, 256, 256, 3))
    r2 = shapes.two_colour_r2(np.concatenate([two, np.full_like(two, 77)]))
    np.testing.assert_allclose(r2, [1.0, 1.0])
    np.testing.assert_allclose(shapes.two_colour_r2(ramp), [0.75], atol=1e-4)
    images, _ = shapes.make_shapes(24, 32, seed=5)
    assert np.median(shapes.two_colour_r2(images)) > 0.9
