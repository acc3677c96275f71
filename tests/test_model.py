"""Model shapes, the pinned parameter count of the chapter's model, and config round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config
from flax import nnx

from jaxvae.config import PRESETS, SEED, Config, ConfigError, preset
from jaxvae.model import build, count_params, sincos_2d

# The chapter's model (seed preset). The same count comes out of ../shared/bench/seed_ref.py,
# the chapter's own linen code: 6,516,992.
SEED_PARAMS = 6_516_992


def test_seed_preset_is_the_chapters_setting():
    c = preset("seed")
    assert (c.hidden, c.z_dim, c.patch_size, c.image_size, c.channels) == (256, 64, 8, 64, 3)
    assert (c.depth, c.heads, c.mlp_ratio, c.lr, c.batch_size, c.beta) == (4, 4, 4, 3e-4, 64, 100.0)
    assert (c.steps, c.eval_every) == (100_000, 300)


# Every preset's count, pinned: a change to a preset or to the model shows up here first.
# (tiny-transformer: 586,337 with its shared learned decoder sigma, one scalar beside the transformer;
# tiny, the conv ResNet with the broadcast head: 136,036 = encoder 95,168 (patch stem 1,568, ResBlock 18,624,
# stride-2 conv 9,248, GroupNorm 64, head 65,664) + decoder 40,867 (Broadcast (64+2)*128+128 + 128*32+32 = 12,704,
# ResBlock 18,624, GroupNorm 64, PixelPlanes 64*48+48 + 16*8+8 + 64*24+24 = 4,816, to_pixels 32*128+128 = 4,224,
# output conv 435) + the shared sigma, as test_conv.py counts a small conv;
# mnist, the MLP 784-500-500-(20 means, 20 log-stds) and 20-500-500-784 logits, and its VampPrior's
# 500 pseudo-inputs of 784 pixels: 663,040 + 653,784 + 392,000.)
PRESET_PARAMS = {"seed": SEED_PARAMS, "tiny": 136_036, "tiny-transformer": 586_337, "mnist": 1_708_824}


def abstract(c: Config):
    """The model with shapes and dtypes only (nothing is initialised): what a count or a shape needs."""
    return nnx.eval_shape(lambda: build(c))


def test_seed_parameter_count_is_pinned():
    assert count_params(abstract(SEED)) == SEED_PARAMS


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_parameter_count_is_pinned(name):
    assert name in PRESET_PARAMS, f"pin the parameter count of the new preset {name!r}"
    assert count_params(abstract(PRESETS[name])) == PRESET_PARAMS[name]


@pytest.mark.parametrize("changes", [
    {}, {"image_size": 24, "patch_size": 8, "channels": 1}, {"z_dim": 7, "depth": 2},
    {"decoder_variance": "fixed", "decoder_std": 0.5}, {"posterior_scale": "softplus", "decoder_scale": "log_var"},
])
def test_shapes(changes):
    c = micro_config(**changes)
    x = jax.ShapeDtypeStruct((3, c.image_size, c.image_size, c.channels), jnp.float32)

    def forward(x):
        model = build(c)
        q = model.encode(x)
        p = model.decode(q.mean)
        return q.mean, q.log_std, p.mean, p.log_std

    mean, log_std, x_mean, x_log_std = jax.eval_shape(forward, x)  # traced, not run
    assert mean.shape == log_std.shape == (3, c.z_dim)
    assert x_mean.shape == x_log_std.shape == x.shape
    assert x_mean.dtype == jnp.float32


def test_fixed_decoder_variance_has_the_given_sigma_and_no_scale_head():
    learned, fixed = micro_config(), micro_config(decoder_variance="fixed", decoder_std=0.25)
    p = build(fixed).decode(jnp.zeros((2, fixed.z_dim)))
    np.testing.assert_allclose(p.std, 0.25, rtol=1e-6)
    head = lambda c: build(c).decoder.head.kernel.shape[-1]  # noqa: E731
    assert head(learned) == 2 * head(fixed)


def test_sincos_embedding_is_distinct_per_patch():
    emb = sincos_2d(32, 4)[0]
    assert emb.shape == (16, 32)
    assert len({tuple(np.round(r, 5)) for r in emb}) == 16


def test_unpatchify_puts_each_patch_in_its_place():
    """With the decoder's head zeroed except a bias that encodes (row, col, channel) positions,
    the decoded image must equal the same layout built by hand."""
    c = micro_config(decoder_variance="fixed")
    model = build(c)
    p, g = c.patch_size, c.image_size // c.patch_size
    model.decoder.head.kernel[...] = jnp.zeros(model.decoder.head.kernel.shape)
    bias = np.arange(p * p * c.channels, dtype=np.float32)  # (P*P*C,) in (py, px, ch) order
    model.decoder.head.bias[...] = jnp.asarray(bias)
    out = np.asarray(model.decode(jnp.zeros((1, c.z_dim))).mean[0])
    expected = np.tile(bias.reshape(p, p, c.channels), (g, g, 1))
    np.testing.assert_array_equal(out, expected)


def test_config_json_round_trip_and_presets():
    for c in PRESETS.values():
        assert Config.from_json(c.to_json()) == c
    with pytest.raises(ConfigError, match="unknown keys"):
        Config.from_dict({**SEED.to_dict(), "nonsense": 1})


@pytest.mark.parametrize("changes, message", [
    ({"patch_size": 5}, "does not divide image_size"),
    ({"image_size": 0}, "image_size must be a positive integer"),
    ({"steps": -1}, "steps must be a positive"),
    ({"batch_size": 0}, "batch_size must be a positive"),
    ({"beta": -0.1}, "beta must be >= 0"),
    ({"posterior_scale": "std"}, "unknown posterior_scale"),
    ({"decoder_scale": "exp"}, "unknown decoder_scale"),
    ({"heads": 3}, "heads 3 does not divide hidden"),
])
def test_invalid_configs_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        micro_config(**changes)
