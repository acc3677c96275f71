"""The chapter's pictures: five loss curves and image grids. Matplotlib, no display needed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _to_display(x: np.ndarray) -> np.ndarray:
    """[-1, 1] NHWC -> [0, 1] for imshow; grayscale is squeezed to (H, W)."""
    img = np.clip((np.asarray(x, np.float32) + 1) / 2, 0, 1)
    return img[..., 0] if img.shape[-1] == 1 else img


def _save(fig, path: Path) -> None:
    from jaxvae.outputs import PNG_METADATA  # marks the file as jaxvae's: a rerun may replace it

    fig.savefig(path, dpi=100, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)


# An objective's own terms (objectives.py), drawn in a sixth panel when a run logged any
OBJECTIVE_TERMS = {"mi": "MI", "tc": "TC", "dimwise_kl": "dim-wise KL", "iwae_gap": "-ELBO - (-IWAE)"}


def curves(records: list[dict], path: Path) -> None:
    """Five panels: total loss (train and valid), reconstruction loss, KL, x sigma, z sigma; and a sixth
    with the objective's own terms (btcvae: MI, TC, dim-wise KL; iwae: the bound's gain over the ELBO)."""
    panels = [("loss", "Total Loss"), ("reconstruction_loss", "Reconstruction Loss"),
              ("kl_loss", "KL Loss"), ("x_std", "X Std"), ("z_std", "Z Std")]
    terms = [k for k in OBJECTIVE_TERMS if any(k in r for r in records)]
    fig, axs = plt.subplots(1, 5 + bool(terms), figsize=(18 + 3.6 * bool(terms), 3))
    if terms:
        for key in terms:
            pts = [(r["step"], r[key]) for r in records if key in r]
            axs[5].plot(*zip(*pts, strict=True), label=OBJECTIVE_TERMS[key], marker="." if len(pts) < 3 else None)
        axs[5].set_title("Objective Terms (nats)")
        axs[5].set_xlabel("step")
        axs[5].legend()
    for ax, (key, title) in zip(axs[:5], panels, strict=True):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), label="Train")
        val = [(r["step"], r[f"val_{key}"]) for r in records if f"val_{key}" in r]
        if val:
            ax.plot(*zip(*val, strict=True), label="Valid", marker="." if len(val) < 3 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    _save(fig, path)


def rows_figure(rows: list[tuple[str, np.ndarray]], path: Path, title: str | None = None,
                columns: list[str] | None = None, size: float = 2.0) -> None:
    """The one figure of images: labelled rows, each (N,S,S,C) in [-1,1], `size` inches per image, with
    `columns` (optional) over the first row's images. (tile is the same grid as bare pixels.)"""
    cols = max(len(imgs) for _, imgs in rows)
    fig, axs = plt.subplots(len(rows), cols, figsize=(size * cols, 1.05 * size * len(rows) + (0.4 if title else 0)),
                            squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(cols):
            ax = axs[r, c]
            if c < len(imgs):
                ax.imshow(_to_display(imgs[c]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if r == 0 and columns is not None:
                ax.set_title(columns[c], fontsize=10)
        axs[r, 0].set_ylabel(label, fontsize=12)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def reconstructions(originals: np.ndarray, recon: np.ndarray, mse: float, path: Path, note: str = "") -> None:
    """The title says which images the MSE is of (these N held-out ones), and `note` how it relates
    to any other figure (the summary's MSE is over more images)."""
    title = f"the first {len(originals)} held-out images: MSE of these {len(originals)} in [0,1] pixels {mse:.4f}"
    rows_figure([("original", originals), ("reconstruction", recon)], path,
                title=title + (f"\n({note})" if note else ""))


def prior_samples(images: np.ndarray, path: Path, rows: int = 1, title: str | None = None) -> None:
    """images (N,S,S,C) in [-1,1], laid out in `rows` unlabelled rows."""
    cols = -(-len(images) // rows)
    rows_figure([("", images[i:i + cols]) for i in range(0, len(images), cols)], path, title=title)


def interpolation(pixel: np.ndarray, latent: np.ndarray, path: Path, method: str = "slerp") -> None:
    rows_figure([("pixel space", pixel), (f"latent ({method})", latent)], path,
                title="interpolation between two held-out images")


def traversal_grid(images: np.ndarray, dims, values: np.ndarray, path, kl: np.ndarray | None = None) -> None:
    """images (D,T,S,S,C) in [-1,1]: row i sweeps latent dims[i] over `values` (T,), shown on top."""
    labels = [f"z[{d}]" + (f"\nKL {kl[d]:.2f}" if kl is not None else "") for d in dims]
    rows_figure(list(zip(labels, images, strict=True)), path, columns=[f"{v:+.2g}" for v in values], size=1.6,
                title="latent traversals: one dimension swept (prior sigmas), the others at a held-out image's "
                      "posterior mean")


def kl_per_dim(kl: np.ndarray, path, highlight=(), mean_variance: np.ndarray | None = None,
               threshold: float | None = None, order=None) -> None:
    """The one chart of the KL per latent dim: a bar of mean KL (nats) per dim, in `order` (default
    0..Z-1). With mean_variance (Z,) and threshold (latents.ACTIVE_VARIANCE): active dims
    (Var_x E_q[z_d|x] > threshold) blue, the others gray, and a second panel of the variances (log
    scale) with the threshold dashed. `highlight` dims (the ones traversed) orange."""
    order = np.arange(len(kl)) if order is None else np.asarray(order)
    active = np.ones(len(kl), bool) if threshold is None else np.asarray(mean_variance) > threshold
    marked = {int(h) for h in highlight}
    colors = ["tab:orange" if d in marked else "tab:blue" if active[d] else "tab:gray" for d in order]
    panels = [(np.asarray(kl), "mean KL (nats)", f"KL per dimension (total {float(np.sum(kl)):.2f} nats)")]
    if mean_variance is not None:
        title = "variance of posterior means" + (f" ({int(active.sum())} active: > {threshold:g})" if threshold else "")
        panels.append((np.maximum(mean_variance, 1e-8), None, title))
    width = min(12.0, max(5.0, 0.15 * len(kl)))  # per panel: z_dim 64 still fits a page
    fig, axs = plt.subplots(1, len(panels), figsize=(width * len(panels), 3), squeeze=False)
    for ax, (values, ylabel, title) in zip(axs[0], panels, strict=True):
        ax.bar(np.arange(len(kl)), values[order], color=colors)
        if ylabel is None:
            ax.set_yscale("log")
            if threshold is not None:
                ax.axhline(threshold, color="gray", linestyle="--", linewidth=1)
        else:
            ax.set_ylabel(ylabel)
        if np.array_equal(order, np.arange(len(kl))):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # dimensions are whole numbers
            ax.set_xlabel("latent dimension")
        else:  # a tick per bar, naming its dimension
            ax.set_xticks(range(len(kl)), [str(d) for d in order], fontsize=7 if len(kl) > 24 else 9)
            ax.set_xlabel("latent dimension (sorted by KL)")
        ax.set_title(title)
    _save(fig, path)


def tile(images: np.ndarray, cols: int | None = None, min_side: int = 64, pad: int = 2) -> np.ndarray:
    """The one grid of pixels: (N,S,S,C) in [-1,1] (or uint8, as stored) -> (H,W,3) uint8, `cols`
    columns (default N) on white, each image scaled up by a whole factor (nearest neighbour, pixels
    stay sharp) to at least `min_side` pixels. The report's rows and `jaxvae show-data` draw it.
    Numpy only: a page of grids this way costs milliseconds where a figure of axes costs seconds."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.clip((images.astype(np.float32) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, s = len(images), images.shape[1]
    cols = n if cols is None else cols
    rows = -(-n // cols)
    k = max(1, -(-min_side // s))
    images = images.repeat(k, axis=1).repeat(k, axis=2)  # (N, kS, kS, 3)
    cell = k * s + pad
    grid = np.full((rows * cell + pad, cols * cell + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * cell: (r + 1) * cell, pad + c * cell: (c + 1) * cell] = img
    return grid


def png(array: np.ndarray) -> bytes:
    """(H,W,3) uint8 -> PNG bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def mutual_information_heatmap(mi: np.ndarray, entropy: np.ndarray, factor_names, path) -> None:
    """Heatmap of I(z_i; v_j) / H(v_j), the normalised mutual information behind MIG: one row per
    factor, one column per latent dimension. A disentangled code has one bright cell per row."""
    norm = np.asarray(mi, np.float64).T / np.maximum(np.asarray(entropy, np.float64)[:, None], 1e-12)  # (F, Z)
    f, z = norm.shape
    fig, ax = plt.subplots(figsize=(min(16.0, max(5.0, 0.45 * z + 2)), 0.5 * f + 1.4))
    image = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(f), labels=list(factor_names))
    ax.set_xticks(range(z), labels=[str(i) for i in range(z)], fontsize=8 if z > 24 else 10)
    ax.set_xlabel("latent dimension")
    if z <= 32:  # the numbers themselves, where they fit
        for (j, i), v in np.ndenumerate(norm):
            ax.text(i, j, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 0.6 else "white")
    ax.set_title("mutual information I(z_i; factor) / H(factor), 20-bin discretised codes")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    _save(fig, path)
