"""`shapes`: a procedurally generated image dataset that needs no download.

Each image is one coloured shape (square, ellipse or triangle) with a random position, scale,
rotation, colour and background colour, rendered with 4x4 supersampling for smooth edges. The
generator is deterministic by seed and returns its ground-truth factors beside the images, so a
user can check what the latents learned.

`render(factors)` draws images for chosen factors on a discrete grid, so that factors can be held
fixed and varied (the disentanglement metrics do). The grid, each factor's index i of its size:

    factor  values  what index i means
    shape   3       0 square, 1 ellipse, 2 triangle
    scale   6       half-size 0.18 + 0.04 i (a fraction of the side; make_shapes: uniform in [0.18, 0.38])
    angle   10      2 pi i / 10 radians (make_shapes: uniform in [0, 2 pi))
    x       8       centre margin + (1 - 2 margin) i / 7, margin = 0.8 scale (make_shapes: uniform there)
    y       8       the same, top to bottom

The shape and background colours are nuisance: drawn at random for every image, as make_shapes
draws them, and not scored. The square repeats every 90 degrees and the ellipse every 180.
"""

from __future__ import annotations

import numpy as np

from jaxvae.data.factors import FactorData

FACTOR_NAMES = ("shape", "scale", "angle", "x", "y")
FACTOR_SIZES = (3, 6, 10, 8, 8)
_SUPERSAMPLE = 4


_UNIT_SHAPES = (
    lambda u, v: (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8),  # square
    lambda u, v: (u / 1.0) ** 2 + (v / 0.6) ** 2 <= 1.0,  # ellipse
    lambda u, v: (v <= 0.7) & (v >= -1.0 + 1.89 * np.abs(u)),  # triangle, vertices (0,-1), (-0.9,0.7), (0.9,0.7)
)


def _inside(kind: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Is the shape-frame point (u, v) inside the unit shape of `kind`? kind (b,), u and v (b, ...).
    Each image is tested against its own shape only (a third of the work of testing all three)."""
    out = np.empty(u.shape, bool)
    for k, inside in enumerate(_UNIT_SHAPES):
        chosen = kind == k
        out[chosen] = inside(u[chosen], v[chosen])
    return out


def make_shapes(n: int, image_size: int, seed: int = 0, channels: int = 3,
                chunk: int = 256) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render n images.

    Returns:
      images: (n, S, S, channels) uint8.
      factors: dict of (n,) arrays: shape (0 square, 1 ellipse, 2 triangle), x, y (centre in
        [0,1]), scale (half-size as a fraction of S), angle (radians), and (n, 3) colour and
        background in [0, 1].
    """
    factors = shape_factors(n, seed)
    return _draw(factors, image_size, channels, chunk), factors


def _separate_colours(factors: dict[str, np.ndarray]) -> None:
    """Keep shape and background apart so every image has a visible shape (in place)."""
    too_close = np.abs(factors["colour"] - factors["background"]).sum(-1) < 0.6
    factors["colour"][too_close] = 1.0 - factors["background"][too_close]


def render(factors: np.ndarray, image_size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Images for factor indices on the grid of FACTOR_SIZES (see the module docstring).

    Args:
      factors: (n, 5) integers, FACTOR_NAMES order.
      seed: fixes the nuisance colours, drawn per image.
    Returns: (n, S, S, channels) uint8.
    """
    f = np.asarray(factors)
    if f.ndim != 2 or f.shape[1] != len(FACTOR_SIZES):
        raise ValueError(f"shapes factors must have shape (n, {len(FACTOR_SIZES)}), got {f.shape}")
    if f.size and ((f < 0).any() or (f >= np.asarray(FACTOR_SIZES)).any()):
        raise ValueError(f"shapes factor indices must lie in [0, {FACTOR_SIZES}), got {f.min(0)}..{f.max(0)}")
    rng = np.random.default_rng(seed)
    n = len(f)
    scale = 0.18 + 0.04 * f[:, 1]
    margin = scale * 0.8
    values = {"shape": f[:, 0], "scale": scale, "angle": 2 * np.pi * f[:, 2] / FACTOR_SIZES[2],
              "x": margin + (1 - 2 * margin) * f[:, 3] / (FACTOR_SIZES[3] - 1),
              "y": margin + (1 - 2 * margin) * f[:, 4] / (FACTOR_SIZES[4] - 1),
              "colour": rng.uniform(0.0, 1.0, (n, 3)), "background": rng.uniform(0.0, 1.0, (n, 3))}
    _separate_colours(values)
    return _draw(values, image_size, channels)


def _draw(factors: dict[str, np.ndarray], image_size: int, channels: int, chunk: int = 256) -> np.ndarray:
    """Continuous factors (make_shapes' dict) -> (n, S, S, channels) uint8."""
    n = len(factors["shape"])
    s = image_size * _SUPERSAMPLE
    grid = (np.arange(s) + 0.5) / s  # sub-pixel centres in [0, 1]
    py, px = np.meshgrid(grid, grid, indexing="ij")  # (s, s)
    images = np.empty((n, image_size, image_size, channels), np.uint8)
    for lo in range(0, n, chunk):
        sl = slice(lo, min(n, lo + chunk))
        f = {k: v[sl] for k, v in factors.items()}
        dx = px[None] - f["x"][:, None, None]  # (b, s, s)
        dy = py[None] - f["y"][:, None, None]
        cos, sin = np.cos(f["angle"])[:, None, None], np.sin(f["angle"])[:, None, None]
        r = f["scale"][:, None, None]
        u, v = (cos * dx + sin * dy) / r, (-sin * dx + cos * dy) / r
        mask = _inside(f["shape"], u, v).astype(np.float32)
        # Box-filter the supersampled mask down to pixels: anti-aliased coverage in [0, 1].
        cover = mask.reshape(-1, image_size, _SUPERSAMPLE, image_size, _SUPERSAMPLE).mean((2, 4))
        rgb = (cover[..., None] * f["colour"][:, None, None, :]
               + (1 - cover[..., None]) * f["background"][:, None, None, :])  # (b, S, S, 3)
        if channels == 1:
            rgb = rgb @ np.array([0.299, 0.587, 0.114])[:, None]
        images[sl] = np.round(rgb * 255).astype(np.uint8)
    return images


class Shapes(FactorData):
    """`shapes` as ground truth for the metrics: uniform over the grid, colours drawn per image."""

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(self, image_size: int, channels: int = 3):
        self.image_size, self.channels = image_size, channels

    def observations(self, factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return render(factors, self.image_size, self.channels, seed=int(rng.integers(2**63)))


def shape_factors(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The ground-truth factors of make_shapes(n, ..., seed) without rendering the images (see there)."""
    rng = np.random.default_rng(seed)
    factors = {
        "shape": rng.integers(0, 3, n),
        "scale": rng.uniform(0.18, 0.38, n),
        "angle": rng.uniform(0, 2 * np.pi, n),
        "colour": rng.uniform(0.0, 1.0, (n, 3)),
        "background": rng.uniform(0.0, 1.0, (n, 3)),
    }
    margin = factors["scale"] * 0.8
    factors["x"] = rng.uniform(margin, 1 - margin)
    factors["y"] = rng.uniform(margin, 1 - margin)
    _separate_colours(factors)
    return factors


FACTOR_COLUMNS = ("shape", "x", "y", "scale", "angle", "colour_r", "colour_g", "colour_b",
                  "background_r", "background_g", "background_b")


def factor_table(factors: dict[str, np.ndarray]) -> tuple[tuple[str, ...], np.ndarray]:
    """The factors as one (n, 11) float64 table and its column names (FACTOR_COLUMNS)."""
    columns = [factors[k] for k in ("shape", "x", "y", "scale", "angle")]
    table = np.column_stack([*columns, factors["colour"], factors["background"]]).astype(np.float64)
    return FACTOR_COLUMNS, table


def two_colour_r2(images: np.ndarray, iterations: int = 10) -> np.ndarray:
    """How much each image looks like a `shapes` image, one flat shape on a flat background: the fraction
    of its pixel variance that its best two colours explain (2-means on its pixels, started from the
    corner pixel and the centre pixel). 1 for exactly two colours; make_shapes' images score about 0.97
    (the anti-aliased edges); a colour mixture or a cross-fade of two shapes scores lower; a flat image 1.

    images: (N, S, S, C) uint8. Returns (N,) float64.
    """
    out = []
    for im in np.asarray(images).reshape(len(images), -1, images.shape[-1]).astype(np.float64) / 255:
        centres = im[[0, len(im) // 2 + images.shape[2] // 2]].copy()  # (2, C)
        for _ in range(iterations):
            label = np.argmin(((im[:, None] - centres[None]) ** 2).sum(-1), axis=1)
            for k in range(2):
                if (label == k).any():
                    centres[k] = im[label == k].mean(0)
        total = ((im - im.mean(0)) ** 2).sum()
        out.append(1.0 if total < 1e-12 * len(im) else 1 - ((im - centres[label]) ** 2).sum() / total)
    return np.asarray(out)
