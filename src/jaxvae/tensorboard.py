"""TensorBoard event files for `jaxvae train --tensorboard` (tensorboardX, an optional extra).

A view of the run for people who already keep TensorBoard open; metrics.jsonl stays the source of
truth, and the events are written from the same records at the same steps. No TensorFlow: the
tensorboardX writer serialises the protobufs itself.

    RUN/tensorboard/events.out.tfevents.*   scalars train/<metric> and valid/<metric>, and at
                                            the end the run's pictures (curves, grids) as images

    tensorboard --logdir runs/      # with the `tensorboard` package, which jaxvae does not need
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxvae import run as run_lib
from jaxvae.config import ConfigError

DIRECTORY = run_lib.TENSORBOARD
INSTALL = "pip install 'jaxvae[tensorboard]' (or: pip install tensorboardX)"


class TensorBoard:
    """The training loop's writer: created before the run directory (so a missing tensorboardX
    fails before anything is written), opened on it, fed at log time, closed when the loop ends
    however it ends; the pictures made after the loop go to a second event file in the same
    directory (TensorBoard reads them all). Disabled, every method does nothing, so the loop never
    branches on it."""

    def __init__(self, enabled: bool):
        self.writer, self.logdir = None, None
        self._writer_class = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ConfigError(f"--tensorboard needs tensorboardX, which is not installed: {INSTALL}") from None
            self._writer_class = SummaryWriter

    def open(self, run_dir: Path) -> None:
        if self._writer_class is not None:
            self.logdir = str(Path(run_dir) / DIRECTORY)
            self.writer = self._writer_class(logdir=self.logdir, flush_secs=30)

    def scalars(self, step: int, record: dict) -> None:
        """One metrics.jsonl record: `val_x` goes to valid/x, everything else to train/<name>."""
        if self.writer is None:
            return
        for name, value in record.items():
            if name == "step" or not isinstance(value, int | float):
                continue
            tag = f"valid/{name[4:]}" if name.startswith("val_") else f"train/{name}"
            self.writer.add_scalar(tag, float(value), global_step=step)

    def images(self, step: int, pictures: dict[str, Path | np.ndarray]) -> None:
        """Images by tag: a PNG file the run wrote (curves, grids), or an (H,W,C) uint8 array.
        Files that do not exist are skipped."""
        if self.logdir is None:
            return
        from PIL import Image

        writer = self.writer or self._writer_class(logdir=self.logdir)
        for tag, picture in pictures.items():
            if isinstance(picture, np.ndarray):
                array = picture
            elif Path(picture).is_file():
                with Image.open(picture) as im:
                    array = np.asarray(im.convert("RGB"))
            else:
                continue
            writer.add_image(tag, array, global_step=step, dataformats="HWC")
        if writer is not self.writer:
            writer.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
