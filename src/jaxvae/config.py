"""The one frozen config of a run, its named presets, and its validation.

The CLI is generated from `Config` (tyro reads the field docstrings below as help), every run
saves the resolved config as `config.json`, and `from_json` rebuilds exactly that config.
Validation raises `ConfigError` with one readable line; the CLI prints it without a traceback.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

SCALE_PARAMETERIZATIONS = ("log_var", "log_std", "softplus")


class ConfigError(ValueError):
    """A user-facing problem with the given settings (printed as one line by the CLI)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run. Defaults are the chapter's (`seed` preset)."""

    # --- data -------------------------------------------------------------------------------
    data: str = "shapes"
    """Training data: `shapes` (embedded), a folder, .npy/.npz, mnist:DIR, cifar10:DIR, celeba:DIR."""
    image_size: int = 64
    """Side length S of the square images the model sees."""
    channels: int = 3
    """Image channels (3 for RGB, 1 for grayscale)."""
    val_fraction: float = 0.05
    """Deterministic held-out fraction for validation (the chapter's 95/5)."""
    flip: bool = False
    """Random horizontal flips on training batches."""

    # --- model ------------------------------------------------------------------------------
    patch_size: int = 8
    """Side of the square patches the transformer sees; must divide image_size."""
    hidden: int = 256
    """Transformer width."""
    depth: int = 4
    """Transformer blocks in the encoder and in the decoder."""
    heads: int = 4
    """Attention heads; must divide hidden."""
    mlp_ratio: int = 4
    """MLP width as a multiple of hidden."""
    z_dim: int = 64
    """Latent dimensions."""
    posterior_scale: str = "log_var"
    """How the encoder's raw scale becomes sigma: log_var | log_std | softplus."""
    decoder_scale: str = "log_std"
    """How the decoder's raw scale becomes sigma: log_var | log_std | softplus."""
    decoder_variance: str = "learned"
    """learned (per-pixel sigma from the decoder) | fixed (the MSE case, sigma = decoder_std)."""
    decoder_std: float = 1.0
    """The decoder's sigma when decoder_variance is fixed."""
    precision: str = "fp32"
    """Matmul compute dtype: fp32 | bf16 (parameters and losses stay fp32)."""

    # --- objective and optimisation ---------------------------------------------------------
    beta: float = 100.0
    """Weight of the KL term (the chapter's 100; 1 is the true ELBO)."""
    lr: float = 3e-4
    """Adam learning rate."""
    batch_size: int = 64
    """Images per step."""
    steps: int = 100_000
    """Training steps."""
    seed: int = 0
    """Seed for parameters, data order and noise."""

    # --- logging ----------------------------------------------------------------------------
    log_every: int = 50
    """Fetch metrics to the host and append them to metrics.jsonl every N steps."""
    eval_every: int = 300
    """Validation loss every N steps."""
    ckpt_every: int = 1000
    """Checkpoint every N steps (and always at the end)."""
    keep: int = 3
    """Keep the last N checkpoints, plus the best by validation loss."""
    max_bad_steps: int = 20
    """N non-finite (skipped) steps in a row roll back to the last good checkpoint at half the lr; twice stops."""

    def __post_init__(self) -> None:
        validate(self)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"config has unknown keys {unknown}: written by another jaxvae version?")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(c: Config) -> None:
    """Raise ConfigError naming the first setting that cannot work."""
    for name in ("image_size", "channels", "patch_size", "hidden", "depth", "heads", "mlp_ratio",
                 "z_dim", "batch_size", "steps", "log_every", "eval_every", "ckpt_every"):
        value = getattr(c, name)
        _check(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
    _check(c.image_size % c.patch_size == 0,
           f"patch_size {c.patch_size} does not divide image_size {c.image_size}")
    _check(c.hidden % c.heads == 0, f"heads {c.heads} does not divide hidden {c.hidden}")
    for name in ("posterior_scale", "decoder_scale"):
        value = getattr(c, name)
        _check(value in SCALE_PARAMETERIZATIONS,
               f"unknown {name} {value!r}: choose one of {', '.join(SCALE_PARAMETERIZATIONS)}")
    _check(c.decoder_variance in ("learned", "fixed"),
           f"unknown decoder_variance {c.decoder_variance!r}: choose learned or fixed")
    _check(c.decoder_std > 0, f"decoder_std must be > 0, got {c.decoder_std}")
    _check(c.precision in ("fp32", "bf16"), f"unknown precision {c.precision!r}: choose fp32 or bf16")
    _check(c.beta >= 0, f"beta must be >= 0, got {c.beta}")
    _check(c.lr > 0, f"lr must be > 0, got {c.lr}")
    _check(0.0 <= c.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {c.val_fraction}")
    for name in ("keep", "max_bad_steps"):  # checkpoint retention and the non-finite guard
        value = getattr(c, name)
        _check(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")


# The chapter's exact setting: hidden 256, z 64, 8x8 patches of 64x64x3, depth 4, 4 heads,
# MLP ratio 4, Adam 3e-4, batch 64, KL weight 100, 100k steps, validation every 300 steps.
SEED = Config()

# Small enough to train in about a minute on a 2-core CPU and still give recognisable shapes.
TINY = Config(
    image_size=32, patch_size=4, hidden=96, depth=2, heads=4, mlp_ratio=2, z_dim=16,
    beta=1.0, lr=1e-3, batch_size=32, steps=1500, log_every=25, eval_every=250, ckpt_every=500,
)

PRESETS: dict[str, Config] = {"seed": SEED, "tiny": TINY}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
