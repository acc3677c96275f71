"""`arch conv`: a convolutional ResNet encoder and decoder for square images (NVAE / latent
diffusion's KL autoencoder in miniature, with the chapter's vector latent z).

Shapes: B batch, S image side, C channels, P = patch_size (the stem's patch side, 1 for none),
L = len(channel_mults) levels, w_l = hidden * mult_l, r = S / (P 2^L) the side at the bottom,
Z latent dims. Images are NHWC in [-1, 1].

  encoder: (B,S,S,C) -stem-> (B,S/P,S/P,w_0) -> per level l: blocks x ResBlock(w_l), then a
           stride-2 conv3x3 to w_{l+1} (w_{L-1} after the last) -> (B,r,r,w_{L-1})
           -> GroupNorm, SiLU, flatten -> Dense -> mean, raw (B,Z) each
  decoder: (B,Z) -Dense-> (B,r,r,w_{L-1}) -> per level l = L-1 .. 0: nearest x2 upsampling and a
           conv3x3 to w_l, then blocks x ResBlock(w_l) -> (B,S/P,S/P,w_0)
           -> GroupNorm, SiLU -> [P > 1: 1x1 conv to P*P*f, depth-to-space, SiLU: (B,S,S,f)]
           -> conv3x3 -> (B,S,S,k*C), k values per pixel value (likelihoods.py)
           decoder_head broadcast replaces the Dense and the bottom level's upsampling: Broadcast maps
           (B,Z) -> (B,2r,2r,w_{L-1}) (below), and the levels go on from there; and PixelPlanes(z)
           adds m channels at full resolution before the last conv, m = fine_channels // 2 (P > 1:
           in place of m of the f channels from depth-to-space, so the last conv still sees f), and
           adds its paint (B,S,S,k*C) to the last conv's output.

Why a broadcast head (Watters et al. 2019, the spatial broadcast decoder). The Dense head gives every cell
of the bottom grid its own linear function of z, so the code of a shape at one place and at another are
different channel patterns, and the midpoint of two codes decodes to both shapes at half strength: on
`shapes` the interpolations cross-fade and sampled codes decode to colour mixtures. Broadcast applies ONE
MLP to [z, x, y] at every cell, so where a shape is becomes a number in z that the MLP compares with the
cell's coordinates, and the midpoint of two codes is one shape halfway. Alone it drew every shape as a
round disc (MSE 0.0055 at 3400 steps); PixelPlanes, lines at full resolution whose slope and offset z
sets, brought the ellipses' elongation and angle back, and their paint (below) the squares' and
triangles' corners. The `tiny` preset (lr 1.2e-2, Adam b2 0.99, 4700 steps, the transformer demo's
time): held-out MSE 0.0025 / 0.0023 / 0.0024 over seeds 0-2 (the Dense head: 0.0027 in 3400 steps). Its
samples are one shape on a background when drawn from a Gaussian mixture fitted to the codes
(`jaxvae fit-sampler`, as `make demo` does); N(0, I) draws decode faint (README, "Image models").

The stem is a 3x3 conv (P = 1) or a PxP patch embedding (a matmul on space-to-depth patches). Why P:
on a CPU a 3x3 conv of few channels at full resolution runs at a third of the speed of the same
FLOPs at lower resolution and more channels (measured in benchmarks/quality.py's notes), so P = 2
moves every residual block to S/2 (P = 4, the `tiny` preset, to S/4: per FLOP, a 16-channel 3x3 conv at
16x16 ran at about a quarter of the speed of a 64-channel one at 4x4 on the 2-core CPU) and keeps one cheap 3x3
conv of f channels at full resolution.
That last conv mixes each pixel's neighbourhood across the PxP cells, so nothing paints patches
independently (the transformer's 8x8 seams). ResBlocks are pre-activation (GroupNorm, SiLU,
conv) twice with the second conv zero-initialised, so every block starts as the identity.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxvae.config import Config

GROUPS = 8  # GroupNorm groups (fewer where the width is not divisible by 8)


def widths(c: Config) -> list[int]:
    """Channels per level: hidden x each of channel_mults."""
    return [c.hidden * m for m in c.conv_mults]


def _conv(d_in: int, d_out: int, rngs: nnx.Rngs, stride: int = 1, zero: bool = False) -> nnx.Conv:
    init = {"kernel_init": nnx.initializers.zeros_init()} if zero else {}
    return nnx.Conv(d_in, d_out, kernel_size=(3, 3), strides=(stride, stride), padding="SAME", rngs=rngs, **init)


def _norm(d: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(d, num_groups=math.gcd(GROUPS, d), rngs=rngs)


class ResBlock(nnx.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))): (B,H,W,D) -> (B,H,W,D)."""

    def __init__(self, d: int, rngs: nnx.Rngs):
        self.norm1, self.conv1 = _norm(d, rngs), _conv(d, d, rngs)
        self.norm2, self.conv2 = _norm(d, rngs), _conv(d, d, rngs, zero=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        return x + self.conv2(jax.nn.silu(self.norm2(h)))


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
    """(B,H,W,C) -> (B,H/p,W/p,p*p*C): each pxp cell's pixels stacked on the channel axis."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)  # (B,H/p,W/p,p,p,C)
    return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
    """(B,H,W,p*p*C) -> (B,H*p,W*p,C), the inverse of space_to_depth."""
    b, h, w, cc = x.shape
    x = x.reshape(b, h, w, p, p, cc // (p * p)).transpose(0, 1, 3, 2, 4, 5)  # (B,H,p,W,p,C)
    return x.reshape(b, h * p, w * p, cc // (p * p))


def fine_channels(c: Config) -> int:
    """f, the channels of the full-resolution stage after depth-to-space (P > 1). At least 16: on `shapes`
    16 rather than 8 cost 18 % more per step and bought more than that in MSE (README, "Image models")."""
    return max(16, widths(c)[0] // c.patch_size)


class ConvEncoder(nnx.Module):
    def __init__(self, c: Config, *, rngs: nnx.Rngs):
        w = widths(c)
        self.patch = c.patch_size
        self.stem = (_conv(c.channels, w[0], rngs) if self.patch == 1 else
                     nnx.Linear(self.patch**2 * c.channels, w[0], rngs=rngs))
        self.levels = nnx.List([nnx.List([ResBlock(d, rngs) for _ in range(c.blocks)]) for d in w])
        self.down = nnx.List([_conv(d, d_next, rngs, stride=2) for d, d_next in zip(w, w[1:] + w[-1:], strict=True)])
        self.norm = _norm(w[-1], rngs)
        bottom = c.image_size // c.patch_size // 2 ** len(w)
        self.head = nnx.Linear(bottom * bottom * w[-1], 2 * c.z_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = x.astype(jnp.float32)
        h = self.stem(x if self.patch == 1 else space_to_depth(x, self.patch))  # (B,S/P,S/P,w_0)
        for blocks, down in zip(self.levels, self.down, strict=True):
            for block in blocks:
                h = block(h)
            h = down(h)  # (B,H/2,W/2,w_{l+1})
        h = jax.nn.silu(self.norm(h)).reshape(x.shape[0], -1)  # (B, r*r*w_{L-1})
        mean, raw = jnp.split(self.head(h), 2, axis=-1)
        return mean, raw


def centres_xy(n: int) -> jax.Array:
    """(n, n, 2): [x_j, y_i] of cell (i, j) of an n x n grid, the cell centres (2 k + 1) / n - 1 in [-1, 1]."""
    g = (jnp.arange(n, dtype=jnp.float32) + 0.5) * (2.0 / n) - 1.0
    y, x = jnp.meshgrid(g, g, indexing="ij")
    return jnp.stack([x, y], axis=-1)


class Broadcast(nnx.Module):
    """(B,Z) -> (B,n,n,w): h_ij = W2 SiLU(W1 [z, x_j, y_i] + b1) + b2 at every cell (i, j) of an n x n grid,
    x and y the cell's centre in [-1, 1]. One MLP for all cells (hidden 4 w): the spatial broadcast decoder."""

    def __init__(self, z_dim: int, side: int, width: int, *, rngs: nnx.Rngs):
        self.side = side
        self.hidden = nnx.Linear(z_dim + 2, 4 * width, rngs=rngs)
        self.out = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        b, n = z.shape[0], self.side
        cells = jnp.concatenate([jnp.broadcast_to(z[:, None, None, :], (b, n, n, z.shape[-1])),
                                 jnp.broadcast_to(centres_xy(n).astype(z.dtype), (b, n, n, 2))], axis=-1)
        return self.out(jax.nn.silu(self.hidden(cells)))  # (B,n,n,w)


class PixelPlanes(nnx.Module):
    """(B,Z) -> features (B,n,n,m) and paint (B,n,n,v): at every pixel, m features of 2m lines whose slope and
    offset z sets, h_ij = SiLU(W SiLU([x_j, y_i, 1] A(z)) + b), A(z) (3, 2m) a Dense layer of z, x and y the
    pixel's centre in [-1, 1]; and paint_ij = h_ij T(z), T(z) (m, v) a Dense layer of z (zero at the start):
    each feature paints a colour that z sets. A sharp edge at any angle and place, at full resolution, for a
    few FLOPs a pixel. Why the paint: the last conv is linear with fixed weights, so a feature fed only to
    it adds its one fixed colour in every image, and a shape's edge in a colour of z's choosing had to come from
    the coarse levels, blurred. One shape on a background is bg(x) + mask(x) (fg - bg): the paint is that
    product. Measured on `shapes` (the `tiny` net, lr 1.2e-2, 5000 steps, seeds 0-2): held-out MSE 0.0025 /
    0.0035 / 0.0029 without it, 0.0023 / 0.0025 / 0.0026 with it."""

    def __init__(self, z_dim: int, side: int, m: int, values: int, *, rngs: nnx.Rngs):
        self.side, self.lines = side, 2 * m
        self.slopes = nnx.Linear(z_dim, 3 * self.lines, rngs=rngs)
        self.mix = nnx.Linear(self.lines, m, rngs=rngs)
        self.paint = nnx.Linear(z_dim, m * values, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, n = z.shape[0], self.side
        xy1 = jnp.concatenate([centres_xy(n).reshape(n * n, 2), jnp.ones((n * n, 1))], axis=-1).astype(z.dtype)
        a = self.slopes(z).reshape(b, 3, self.lines)  # (B, 3, 2m)
        lines = jax.nn.silu(jnp.einsum("pk,bkl->bpl", xy1, a))  # (B, n*n, 2m)
        h = jax.nn.silu(self.mix(lines)).reshape(b, n, n, -1)  # (B,n,n,m)
        colours = self.paint(z).reshape(b, h.shape[-1], -1)  # (B,m,v)
        return h, jnp.einsum("bijm,bmv->bijv", h, colours)  # (B,n,n,m), (B,n,n,v)


class ConvDecoder(nnx.Module):
    def __init__(self, c: Config, values_per_output: int, *, rngs: nnx.Rngs):
        w = widths(c)
        self.patch = c.patch_size
        bottom = c.image_size // c.patch_size // 2 ** len(w)
        self.bottom, self.width = bottom, w[-1]
        # level l (from the bottom up) upsamples from w_{l+1} (w_{L-1} at the bottom) to w_l
        up = [_conv(d_prev, d, rngs) for d, d_prev in zip(w, w[1:] + w[-1:], strict=True)]
        if c.decoder_head == "broadcast":  # straight onto the bottom level's output grid, 2r x 2r
            self.embed, self.broadcast = None, Broadcast(c.z_dim, 2 * bottom, w[-1], rngs=rngs)
            self.up = nnx.List(up[:-1])
        else:
            self.embed, self.broadcast = nnx.Linear(c.z_dim, bottom * bottom * w[-1], rngs=rngs), None
            self.up = nnx.List(up)
        self.levels = nnx.List([nnx.List([ResBlock(d, rngs) for _ in range(c.blocks)]) for d in w])
        self.norm = _norm(w[0], rngs)
        # broadcast: half of the f full-resolution channels come from PixelPlanes rather than the levels
        m = fine_channels(c) // 2 if c.decoder_head == "broadcast" else 0
        values = values_per_output * c.channels
        self.planes = PixelPlanes(c.z_dim, c.image_size, m, values, rngs=rngs) if m else None
        f = w[0] if self.patch == 1 else fine_channels(c) - m
        self.to_pixels = None if self.patch == 1 else nnx.Linear(w[0], self.patch**2 * f, rngs=rngs)
        self.out = _conv(f + m, values, rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        if self.broadcast is not None:
            h, ups = self.broadcast(z), [None, *reversed(self.up)]  # (B,2r,2r,w_{L-1}): the bottom level's up done
        else:
            h = self.embed(z).reshape(z.shape[0], self.bottom, self.bottom, self.width)  # (B,r,r,w_{L-1})
            ups = list(reversed(self.up))
        for up, blocks in zip(ups, reversed(self.levels), strict=True):
            if up is not None:
                h = up(jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))  # nearest x2, then conv: (B,2H,2W,w_l)
            for block in blocks:
                h = block(h)
        h = jax.nn.silu(self.norm(h))  # (B,S/P,S/P,w_0)
        if self.to_pixels is not None:
            h = jax.nn.silu(depth_to_space(self.to_pixels(h), self.patch))  # (B,S,S,f)
        if self.planes is None:
            return self.out(h)  # (B,S,S,k*C)
        features, paint = self.planes(z)  # (B,S,S,m), (B,S,S,k*C)
        return self.out(jnp.concatenate([h, features], axis=-1)) + paint  # the last conv sees f+m channels
