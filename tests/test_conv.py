"""The convolutional ResNet backbone: shapes for every supported image, the pinned layout
operations, and that it learns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config
from flax import nnx

from jaxvae.config import ConfigError
from jaxvae.conv import depth_to_space, space_to_depth
from jaxvae.model import build, count_params

CONV = dict(arch="conv", hidden=8, channel_mults="1,2", blocks=1, patch_size=1)


@pytest.mark.parametrize("size, channels, changes, run", [
    (28, 1, {}, False),  # MNIST: 28 = 7 x 2^2
    (64, 3, {"channel_mults": "1,2,2", "patch_size": 2}, False),  # the chapter's CelebA 64
    (16, 3, {"likelihood": "logistic", "mixtures": 2}, False),  # test_logistic.py runs the head
    (16, 1, {"likelihood": "bernoulli"}, True),
])
def test_encode_decode_shapes(size, channels, changes, run):
    """Shapes by tracing alone (jax.eval_shape: the large images cost no compile); the small ones
    also run (jitted: one compile rather than an op-by-op dispatch of every layer), and their
    log-probabilities must be finite."""
    c = micro_config(**{**CONV, "image_size": size, "channels": channels, **changes})

    def forward(x):
        model = build(c)
        q = model.encode(x)
        p = model.decode(q.mean)
        return q.mean, q.log_std, p.mean, p.log_prob(x)

    x = jnp.zeros((2, size, size, channels))
    mean, log_std, x_mean, log_prob = jax.jit(forward)(x) if run else jax.eval_shape(forward, x)
    assert mean.shape == log_std.shape == (2, c.z_dim)
    assert x_mean.shape == x.shape and x_mean.dtype == jnp.float32
    if run:
        assert np.isfinite(np.asarray(log_prob)).all()


def test_parameter_count_is_pinned():
    """widths 8, 16; a stem, one ResBlock per level, a stride-2 conv per level, the heads, counted by hand."""
    c = micro_config(**CONV, image_size=16, channels=3, z_dim=4)
    conv = lambda i, o: 9 * i * o + o  # noqa: E731
    gn = lambda d: 2 * d  # noqa: E731
    block = lambda d: 2 * (gn(d) + conv(d, d))  # noqa: E731
    encoder = conv(3, 8) + block(8) + block(16) + conv(8, 16) + conv(16, 16) + gn(16) + (4 * 4 * 16 * 8 + 8)
    decoder = (4 * 16 * 16 + 16 * 16) + conv(16, 16) + conv(16, 8) + block(8) + block(16) + gn(8) + conv(8, 6)
    assert count_params(nnx.eval_shape(lambda: build(c))) == encoder + decoder  # shapes only: nothing runs


def test_space_to_depth_round_trip_and_layout():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 2, 2, 12)
    np.testing.assert_array_equal(y[0, 1, 0], np.asarray(x[0, 2:4, 0:2]).reshape(-1))  # one 2x2 cell, row-major
    np.testing.assert_array_equal(depth_to_space(y, 2), x)


@pytest.mark.parametrize("changes, message", [
    ({"image_size": 18}, "not divisible by patch_size x 2\\^levels"),
    ({"channel_mults": "1,x"}, "channel_mults must be comma-separated positive integers"),
    ({"channel_mults": "1,0"}, "channel_mults must be comma-separated positive integers"),
    ({"channel_mults": ""}, "channel_mults must be comma-separated positive integers"),
    ({"blocks": 0}, "blocks must be a positive integer"),
    ({"data_dim": 5}, "needs --arch mlp or --arch linear, not conv"),
])
def test_bad_conv_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        micro_config(**{**CONV, "image_size": 16, **changes})


def test_unparseable_channel_mults_are_refused_for_any_arch():
    with pytest.raises(ConfigError, match="channel_mults"):
        micro_config(channel_mults="2;4")


@pytest.mark.slow  # 300 steps after a conv compile: 15-26 s on 2 cores
def test_conv_vae_overfits_one_batch():
    """A few hundred Adam steps on 8 images drive the reconstruction error far below the data's variance."""
    import optax
    from flax import nnx

    from jaxvae.losses import vae_loss

    c = micro_config(**CONV, image_size=16, channels=3, beta=0.01, decoder_scale_sharing="shared")
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.repeat(np.repeat(rng.uniform(-1, 1, (8, 4, 4, 3)), 4, 1), 4, 2), jnp.float32)
    model = build(c)
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, key):
        (loss, m), grads = nnx.value_and_grad(lambda mdl: vae_loss(mdl, x, key, c.beta), has_aux=True)(model)
        opt.update(model, grads)
        return m

    for i in range(300):
        step(model, opt, jax.random.key(i))
    recon = model.decode(model.encode(x).mean).mean
    assert float(jnp.mean((recon - x) ** 2)) < 0.02 * float(jnp.var(x))
