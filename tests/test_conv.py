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
from jaxvae.conv import Broadcast, PixelPlanes, depth_to_space, space_to_depth
from jaxvae.model import build, count_params

CONV = dict(arch="conv", hidden=8, channel_mults="1,2", blocks=1, patch_size=1)


@pytest.mark.parametrize("size, channels, changes, run", [
    (28, 1, {}, False),  # MNIST: 28 = 7 x 2^2
    (64, 3, {"channel_mults": "1,2,2", "patch_size": 2}, False),  # the chapter's CelebA 64
    (16, 3, {"likelihood": "logistic", "mixtures": 2}, False),  # test_logistic.py runs the head
    (16, 1, {"likelihood": "bernoulli"}, True),
    (28, 1, {"decoder_head": "broadcast"}, False),
    (64, 3, {"channel_mults": "1,2,2", "patch_size": 2, "decoder_head": "broadcast"}, False),
    (16, 3, {"channel_mults": "1", "patch_size": 4, "decoder_head": "broadcast"}, True),  # the tiny layout
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


def test_broadcast_head_parameter_count_is_pinned():
    """decoder_head broadcast: the Dense onto the 4x4 bottom and the bottom level's upsampling conv give way
    to one MLP [z, x, y] -> 4w -> w over the 8x8 grid, and PixelPlanes adds m = 16 // 2 channels at full
    resolution (Dense z -> 3 x 2m line coefficients, then 2m -> m, and Dense z -> the m x 6 colours they
    paint, 6 = 2 values per pixel value x 3 channels); the encoder is the dense test's."""
    c = micro_config(**CONV, image_size=16, channels=3, z_dim=4, decoder_head="broadcast")
    conv = lambda i, o: 9 * i * o + o  # noqa: E731
    block = lambda d: 2 * (2 * d + conv(d, d))  # noqa: E731
    encoder = conv(3, 8) + block(8) + block(16) + conv(8, 16) + conv(16, 16) + 2 * 16 + (4 * 4 * 16 * 8 + 8)
    planes = (4 * 48 + 48) + (16 * 8 + 8) + (4 * 8 * 6 + 8 * 6)
    decoder = ((4 + 2) * 64 + 64 + 64 * 16 + 16) + planes + conv(16, 8) + block(8) + block(16) + 2 * 8 + conv(16, 6)
    assert count_params(nnx.eval_shape(lambda: build(c))) == encoder + decoder


def test_broadcast_is_one_mlp_of_z_and_each_cells_centre():
    """Every cell (i, j) of the n x n grid gets W2 SiLU(W1 [z, x_j, y_i] + b1) + b2, x_j = (2 j + 1) / n - 1:
    checked against NumPy at every cell. So moving a shape is moving a number in z, not a channel pattern."""
    head = Broadcast(3, 4, 5, rngs=nnx.Rngs(0))
    z = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    got = np.asarray(head(jnp.asarray(z)))  # (2, 4, 4, 5)
    w1, b1 = np.asarray(head.hidden.kernel[...]), np.asarray(head.hidden.bias[...])
    w2, b2 = np.asarray(head.out.kernel[...]), np.asarray(head.out.bias[...])
    centres = (2 * np.arange(4) + 1) / 4 - 1  # -0.75 -0.25 0.25 0.75
    for i, y in enumerate(centres):
        for j, x in enumerate(centres):
            a = np.concatenate([z, np.full((2, 1), x), np.full((2, 1), y)], axis=1) @ w1 + b1
            np.testing.assert_allclose(got[:, i, j], (a / (1 + np.exp(-a))) @ w2 + b2, rtol=1e-5, atol=1e-5)


def test_pixel_planes_are_lines_that_z_sets_at_every_pixel():
    """h_ij = SiLU(W SiLU([x_j, y_i, 1] A(z)) + b), A(z) the Dense layer's output as (3, 2m), at every pixel
    centre x_j = (2 j + 1) / n - 1, and the paint h_ij T(z), T(z) a Dense layer's output as (m, v): checked
    against NumPy. The paint starts at zero (its kernel and bias are zeros), so it is set to random here."""
    planes = PixelPlanes(3, 4, 2, 5, rngs=nnx.Rngs(0))
    z0 = jnp.ones((1, 3))
    assert not np.any(np.asarray(planes(z0)[1]))  # the paint starts at zero
    rng = np.random.default_rng(1)
    planes.paint.kernel[...] = jnp.asarray(rng.normal(size=(3, 10)), jnp.float32)
    planes.paint.bias[...] = jnp.asarray(rng.normal(size=10), jnp.float32)
    z = rng.normal(size=(2, 3)).astype(np.float32)
    features, paint = (np.asarray(v) for v in planes(jnp.asarray(z)))  # (2, 4, 4, 2), (2, 4, 4, 5)
    assert features.shape == (2, 4, 4, 2) and paint.shape == (2, 4, 4, 5)
    silu = lambda a: a / (1 + np.exp(-a))  # noqa: E731
    a = (z @ np.asarray(planes.slopes.kernel[...]) + np.asarray(planes.slopes.bias[...])).reshape(2, 3, 4)
    w, b = np.asarray(planes.mix.kernel[...]), np.asarray(planes.mix.bias[...])
    colours = (z @ np.asarray(planes.paint.kernel[...]) + np.asarray(planes.paint.bias[...])).reshape(2, 2, 5)
    centres = (2 * np.arange(4) + 1) / 4 - 1
    for i, y in enumerate(centres):
        for j, x in enumerate(centres):
            lines = silu(np.einsum("k,bkl->bl", np.array([x, y, 1.0]), a))  # (2, 4)
            h = silu(lines @ w + b)  # (2, 2)
            np.testing.assert_allclose(features[:, i, j], h, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(paint[:, i, j], np.einsum("bm,bmv->bv", h, colours), rtol=1e-5, atol=1e-5)


def test_the_decoder_adds_the_paint_to_its_output():
    """The tiny layout with the broadcast head: setting the paint's bias to B (kernel still zero) moves the
    decoder's output by exactly features @ B at every pixel, the features being PixelPlanes' own."""
    c = micro_config(**{**CONV, "image_size": 16, "channels": 3, "channel_mults": "1", "patch_size": 4,
                        "decoder_head": "broadcast"})
    decoder = build(c).decoder
    z = jnp.asarray(np.random.default_rng(2).normal(size=(2, c.z_dim)), jnp.float32)
    before = np.asarray(decoder(z))  # (2, 16, 16, 6): 2 values per pixel value x 3 channels
    bias = np.random.default_rng(3).normal(size=decoder.planes.paint.bias.shape).astype(np.float32)
    decoder.planes.paint.bias[...] = jnp.asarray(bias)
    features = np.asarray(decoder.planes(z)[0])  # (2, 16, 16, m)
    want = np.einsum("bijm,mv->bijv", features, bias.reshape(features.shape[-1], -1))
    np.testing.assert_allclose(np.asarray(decoder(z)) - before, want, rtol=1e-4, atol=1e-5)


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
    ({"decoder_head": "spatial"}, "unknown decoder_head 'spatial': choose one of dense, broadcast"),
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
