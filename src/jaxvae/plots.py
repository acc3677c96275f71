"""The chapter's pictures: five loss curves and image grids. Matplotlib, no display needed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _to_display(x: np.ndarray) -> np.ndarray:
    """[-1, 1] NHWC -> [0, 1] for imshow; grayscale is squeezed to (H, W)."""
    img = np.clip((np.asarray(x, np.float32) + 1) / 2, 0, 1)
    return img[..., 0] if img.shape[-1] == 1 else img


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def curves(records: list[dict], path: Path) -> None:
    """Five panels: total loss (train and valid), reconstruction loss, KL, x sigma, z sigma."""
    panels = [("loss", "Total Loss"), ("reconstruction_loss", "Reconstruction Loss"),
              ("kl_loss", "KL Loss"), ("x_std", "X Std"), ("z_std", "Z Std")]
    fig, axs = plt.subplots(1, 5, figsize=(18, 3))
    for ax, (key, title) in zip(axs, panels, strict=True):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), label="Train")
        if key == "loss":
            val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
            if val:
                ax.plot(*zip(*val, strict=True), label="Valid")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    _save(fig, path)


def image_grid(images: np.ndarray, path: Path, rows: int = 1, title: str | None = None) -> None:
    """images (N,S,S,C) in [-1,1], laid out in `rows` rows."""
    n = len(images)
    cols = -(-n // rows)
    fig, axs = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows + (0.4 if title else 0)), squeeze=False)
    for i, ax in enumerate(axs.flat):
        if i < n:
            ax.imshow(_to_display(images[i]), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def rows_figure(rows: list[tuple[str, np.ndarray]], path: Path, title: str | None = None) -> None:
    """Labelled rows of images, each (N,S,S,C) in [-1,1]."""
    cols = max(len(imgs) for _, imgs in rows)
    fig, axs = plt.subplots(len(rows), cols, figsize=(2 * cols, 2.1 * len(rows) + (0.4 if title else 0)),
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
        axs[r, 0].set_ylabel(label, fontsize=12)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def reconstructions(originals: np.ndarray, recon: np.ndarray, mse: float, path: Path) -> None:
    rows_figure([("original", originals), ("reconstruction", recon)], path,
                title=f"reconstructions (MSE in [0,1] pixels: {mse:.4f})")


def interpolation(pixel: np.ndarray, latent: np.ndarray, path: Path, method: str = "slerp") -> None:
    rows_figure([("pixel space", pixel), (f"latent ({method})", latent)], path,
                title="interpolation between two held-out images")
