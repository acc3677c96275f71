"""`dsprites`: dSprites' factor grid (Matthey et al. 2017), rendered procedurally on demand.

Five factors, indexed like the original's `latents_classes` (its constant colour factor left out):

    factor       values  what index i means
    shape        3       0 square, 1 ellipse, 2 heart
    scale        6       0.5 + 0.1 i (linear in [0.5, 1])
    orientation  40      2 pi i / 40, counter-clockwise on screen ([0, 2 pi), step 9 degrees)
    pos_x        32      i / 31 in [0, 1]: the sprite's centre, left to right
    pos_y        32      i / 31 in [0, 1]: the sprite's centre, top to bottom

3 x 6 x 40 x 32 x 32 = 737,280 images, each binary (0 or 255), 1 channel, 64 x 64 pixels. Any
image is drawn from its factor indices when it is asked for (15-32 microseconds an image on the
2-core CPU): nothing is stored, and `DSpritesImages` looks like a uint8 (N, S, S, 1) array to the
training pipeline. Rendering beats a memory-mapped cache here: see the README, "Did the latents disentangle?".

How the sprites are drawn: a pixel is on when its centre lies inside the shape (no anti-aliasing).
The shapes fit a disc of radius 0.25 * scale of the image side, so every sprite stays inside the
image; positions map [0, 1] onto centres in [0.25, 0.75], one step 1.03 pixels at 64 x 64. (At
radius 0.2, a square at scale 0.5 and 0.6 drew the same pixels at 4 positions: a scale step must
grow the square's side by more than 2 pixels.) Square: side sqrt(2) * radius. Ellipse:
semi-axes radius and radius / 2, its long axis horizontal at orientation 0. Heart: the sextic
(x^2 + y^2 - 1)^3 = x^2 y^3, lobes up at orientation 0, centred on its centroid and scaled to the
disc. These are not the original's pixels (its sprites are bitmaps of their own), and sizes, margins
and the heart's outline differ; the factor grid and its semantics are the same.

Like the original, the square repeats every 90 degrees (10 orientation steps) and the ellipse every
180 (20 steps): those settings draw identical images. Otherwise distinct settings draw distinct
images at 64 x 64 (checked over the whole grid; tests check samples of it). Other --image-size
values draw the same sprites on a coarser or finer pixel grid, where neighbouring settings of small
sprites can coincide.
"""

from __future__ import annotations

import math

import numpy as np

from jaxvae.data.factors import FactorData

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SIZE = 64  # dSprites' own image side
COUNT = math.prod(FACTOR_SIZES)  # 737,280
RADIUS = 0.25  # a sprite at scale 1 fits a disc of this radius (fraction of the image side)
# Orientation periods in steps, the symmetries of the shapes: square 90 degrees, ellipse 180, heart none.
SYMMETRY_STEPS = (10, 20, 40)
_HEART_CENTROID = 0.2935  # y of the heart's centroid in its own frame, (x^2 + y^2 - 1)^3 = x^2 y^3
_HEART_REACH = 1.2935  # its farthest point from there: dividing by this fits it into the unit disc
_CHUNK = 64  # images drawn at a time: (chunk, S, S) float32 temporaries stay in cache (512 is 2x slower)
ORDER_SEED = 0xD5B1  # the fixed permutation that lays the grid out in random order (see DSpritesImages)


def factor_values(factors: np.ndarray) -> dict[str, np.ndarray]:
    """(n, 5) factor indices -> their meaning: shape (index), scale, angle (radians), x, y (in [0, 1])."""
    f = np.asarray(factors)
    return {"shape": f[:, 0], "scale": 0.5 + 0.1 * f[:, 1], "angle": 2 * np.pi * f[:, 2] / 40,
            "x": f[:, 3] / 31, "y": f[:, 4] / 31}


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Is (u, v) inside the unit shape (fits the unit disc; v points up on screen)?"""
    if shape == 0:
        half = np.float32(1 / math.sqrt(2))
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape == 1:
        return u * u + 4 * v * v <= 1
    x, y = u * np.float32(_HEART_REACH), v * np.float32(_HEART_REACH) + np.float32(_HEART_CENTROID)
    a = x * x + y * y - 1
    return a * a * a <= x * x * y * y * y


def draw(shape: int, scale: np.ndarray, angle: np.ndarray, x: np.ndarray, y: np.ndarray,
         size: int = SIZE) -> np.ndarray:
    """Sprites of one shape from continuous settings: (n,) arrays -> (n, size, size) bool masks.

    x, y in [0, 1] place the centre at RADIUS + (1 - 2 RADIUS) * (x, y) of the image side (y down);
    angle turns the shape counter-clockwise on screen. Pixel (i, j) is on when its centre
    ((j + 0.5) / size, (i + 0.5) / size) lies inside.
    """
    grid = ((np.arange(size, dtype=np.float32) + 0.5) / size)  # (S,) pixel centres in [0, 1]
    cx = (RADIUS + (1 - 2 * RADIUS) * np.asarray(x, np.float32))[:, None, None]
    cy = (RADIUS + (1 - 2 * RADIUS) * np.asarray(y, np.float32))[:, None, None]
    r = (RADIUS * np.asarray(scale, np.float32))[:, None, None]
    cos = np.cos(np.asarray(angle, np.float64)).astype(np.float32)[:, None, None]
    sin = np.sin(np.asarray(angle, np.float64)).astype(np.float32)[:, None, None]
    dx = (grid[None, None, :] - cx) / r  # (n, 1, S): right is +x
    dy = (cy - grid[None, :, None]) / r  # (n, S, 1): up is +y (rows run down)
    u = cos * dx + sin * dy  # (n, S, S): the pixel in the shape's own frame, turned back by angle
    v = cos * dy - sin * dx
    return _inside(shape, u, v)


def render(factors: np.ndarray, image_size: int = SIZE) -> np.ndarray:
    """(n, 5) integer factor indices (FACTOR_NAMES order) -> (n, S, S, 1) uint8 images in {0, 255}."""
    f = np.asarray(factors)
    if f.ndim != 2 or f.shape[1] != len(FACTOR_SIZES):
        raise ValueError(f"dsprites factors must have shape (n, {len(FACTOR_SIZES)}), got {f.shape}")
    if f.size and ((f < 0).any() or (f >= np.asarray(FACTOR_SIZES)).any()):
        raise ValueError(f"dsprites factor indices must lie in [0, {FACTOR_SIZES}), got {f.min(0)}..{f.max(0)}")
    out = np.zeros((len(f), image_size, image_size, 1), np.uint8)
    values = factor_values(f)
    for shape in range(3):
        rows = np.flatnonzero(values["shape"] == shape)
        for lo in range(0, len(rows), _CHUNK):
            sel = rows[lo:lo + _CHUNK]
            mask = draw(shape, values["scale"][sel], values["angle"][sel], values["x"][sel], values["y"][sel],
                        image_size)
            out[sel, :, :, 0] = mask.view(np.uint8) * np.uint8(255)
    return out


def grid_factors(index: np.ndarray) -> np.ndarray:
    """Grid positions (row-major over FACTOR_SIZES) -> (n, 5) factor indices (int16)."""
    return np.stack(np.unravel_index(np.asarray(index, np.int64), FACTOR_SIZES), axis=-1).astype(np.int16)


class DSpritesImages:
    """The whole grid as a read-only uint8 (737280, S, S, 1) array, drawn when indexed.

    Row k is grid position order[k], where `order` is a fixed seeded permutation (ORDER_SEED): any
    slice, such as the validation split's first images, is a random sample of the grid rather than
    737 squares at the smallest scale. Indexing takes an int, a slice or an int array, like Rows.
    """

    def __init__(self, image_size: int = SIZE):
        self.image_size = image_size
        self.order = np.random.default_rng(ORDER_SEED).permutation(COUNT).astype(np.int32)  # (N,)
        self.shape = (COUNT, image_size, image_size, 1)
        self.dtype, self.ndim = np.dtype(np.uint8), 4

    def __len__(self) -> int:
        return COUNT

    def factors(self, index=slice(None)) -> np.ndarray:
        """The factor indices of rows `index`: (n, 5) int16 (or (5,) for an int)."""
        return grid_factors(self.order[index])

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return render(self.factors(np.array([index])), self.image_size)[0]
        return render(self.factors(index).reshape(-1, len(FACTOR_SIZES)), self.image_size)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class DSprites(FactorData):
    """dSprites as ground truth for the metrics: uniform over the full factorial grid."""

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(self, image_size: int = SIZE):
        self.image_size = image_size

    def observations(self, factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return render(factors, self.image_size)  # deterministic: no nuisance
