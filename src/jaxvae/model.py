"""The chapter's VAE in Flax NNX: transformer encoder and decoder over image patches.

Shapes: B batch, S image side, C channels, P patch side, N = (S/P)^2 patches, D hidden width,
Z latent dims. Images are NHWC in [-1, 1].

Precision: parameters, the residual stream, LayerNorms, softmax, GELU and the outputs are fp32.
With `precision` bf16 the transformer's matmuls (forward and both backward ones) and attention
take bf16 operands and accumulate in fp32.

  encoder: (B,S,S,C) -conv PxP stride P-> (B,N,D) +pos, prepend summary token -> (B,1+N,D)
           -> blocks -> LayerNorm -> token 0 -> Dense -> mean, raw  (B,Z) each
  decoder: (B,Z) -Dense-> (B,D) tiled to (B,N,D) +pos -> blocks -> LayerNorm
           -> Dense per patch (B,N,P*P*2C) -> unpatchify (B,S,S,2C) -> mean, raw (B,S,S,C) each

`arch` mlp / linear swap both for MLPEncoder / MLPDecoder over flattened examples, which is what
vector data (B,F) uses; linear is the depth-0 case, one affine map each way. `arch` conv is the
convolutional ResNet of conv.py. A decoder emits k values per output value, where the likelihood
head (likelihoods.py) says what k is and turns them into p(x|z).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvae import likelihoods, priors
from jaxvae.config import Config
from jaxvae.conv import ConvDecoder, ConvEncoder
from jaxvae.distributions import DiagonalGaussian

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


@functools.cache
def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding (MAE style), (1, grid*grid, dim), row-major patches."""
    assert dim % 4 == 0, f"hidden {dim} must be divisible by 4 for 2-D sin-cos embeddings"

    def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]  # (grid*grid, d/2)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    emb = np.concatenate([one_axis(dim // 2, gw), one_axis(dim // 2, gh)], axis=1)
    return emb[None].astype(np.float32)


def _transposed(a: jax.Array) -> jax.Array:
    """a (M,K) -> a^T (K,M), materialized row-major.

    The optimization barrier keeps XLA from folding the transpose back into the consuming dot, and
    the transpose is taken with a unit axis because XLA's CPU backend converts a bf16 array to fp32
    to transpose it as a 2-D one, and then runs the dot in fp32 too.
    """
    return jax.lax.optimization_barrier(a.T[..., None])[..., 0]


def _weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
    """x^T g for x (M,K), g (M,N) -> (K,N), fp32: the kernel gradient, a contraction over the rows.

    Both operands are row-major, so one must be transposed; left to itself XLA's CPU backend
    transposes whichever it likes (often the bigger) or falls back to a slower matmul. Here the
    smaller operand is transposed explicitly (see _transposed). GPU matmuls take transposed
    operands as they are, so there it is the plain contraction.
    """
    if jax.default_backend() != "cpu":
        return jnp.dot(x.T, g, preferred_element_type=jnp.float32)
    if x.shape[1] <= g.shape[1]:
        return jnp.dot(_transposed(x), g, preferred_element_type=jnp.float32)
    return jax.lax.optimization_barrier(jnp.dot(_transposed(g), x, preferred_element_type=jnp.float32)).T


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    """(..., K) @ (K, N) -> (..., N) fp32: operands in `dtype` (fp32 or bf16), fp32 accumulation.

    A custom VJP for two reasons. With bf16, the two backward matmuls (input and kernel
    gradients) also take bf16 operands: autodiff of a bf16 dot with an fp32 result would feed them
    the fp32 cotangent, and XLA then runs them in fp32. And the kernel gradient is laid out for
    the CPU backend's fast matmul (see _weight_grad). The kernel stays an fp32 parameter and gets
    an fp32 gradient.
    """
    return jnp.dot(x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)


def _matmul_fwd(x, kernel, dtype):
    xc, kc = x.astype(dtype), kernel.astype(dtype)
    # The empty array carries x's dtype, which its gradient must have.
    return jnp.dot(xc, kc, preferred_element_type=jnp.float32), (xc, kc, jnp.empty((0,), x.dtype))


def _matmul_bwd(dtype, residuals, g):
    xc, kc, x_dtype = residuals
    gc = g.astype(dtype)  # (..., N)
    dx = jnp.dot(gc, kc.T, preferred_element_type=jnp.float32).astype(x_dtype.dtype)  # (..., K)
    dk = _weight_grad(xc.reshape(-1, xc.shape[-1]), gc.reshape(-1, gc.shape[-1]))  # (K, N)
    return dx, dk


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _dot_general(dtype):
    """nnx.Linear's dot_general: _matmul in `dtype` (Linear contracts x's last axis with kernel's first)."""

    def dot_general(x, kernel, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
        assert dimension_numbers == (((x.ndim - 1,), (0,)), ((), ())), dimension_numbers
        return _matmul(x, kernel, dtype)

    return dot_general


def _linear(d_in: int, d_out: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """A Linear with fp32 parameters, bias and output; its matmul takes bf16 operands when dtype is bf16."""
    return nnx.Linear(d_in, d_out, dot_general=_dot_general(dtype), rngs=rngs)


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v per head: (B,Tq,H,d), (B,Tk,H,d), (B,Tk,H,d) -> (B,Tq,H,d).

    cuDNN's fused attention on a GPU for bf16 inputs (jax.nn.dot_product_attention picks XLA when
    not told otherwise); XLA's everywhere else, and wherever cuDNN declines the shapes or is missing.
    """
    if q.dtype == jnp.bfloat16 and jax.default_backend() == "gpu":
        try:
            return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
        except (RuntimeError, ValueError, NotImplementedError):  # raised while tracing: nothing ran
            pass
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


class Block(nnx.Module):
    """Pre-LayerNorm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) with GELU.

    The residual stream, LayerNorms, GELU and softmax are fp32; only the matmul operands take the
    compute dtype (bf16 when precision is bf16), accumulating in fp32.
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: int, dtype, *, rngs: nnx.Rngs):
        self.heads, self.dtype = heads, dtype
        self.ln1 = nnx.LayerNorm(hidden, rngs=rngs)
        self.qkv = _linear(hidden, 3 * hidden, dtype, rngs)
        self.proj = _linear(hidden, hidden, dtype, rngs)
        self.ln2 = nnx.LayerNorm(hidden, rngs=rngs)
        self.fc1 = _linear(hidden, mlp_ratio * hidden, dtype, rngs)
        self.fc2 = _linear(mlp_ratio * hidden, hidden, dtype, rngs)

    def __call__(self, x: jax.Array, queries: int | None = None) -> jax.Array:
        """x: (B,T,D) -> (B,T,D); with `queries` = n, only the first n tokens' outputs, (B,n,D).

        Every token is still a key and a value; only the query side (attention rows, projection,
        MLP) shrinks, so the result equals the first n rows of the full block's output.
        """
        b, t, d = x.shape
        hd = d // self.heads
        h = self.ln1(x)
        if queries is not None:  # queries from the first n tokens only; keys and values from all T
            x, t = x[:, :queries], queries
        # Three matmuls on thirds of the fused kernel, not one sliced afterwards: the backward pass
        # then gets three separate cotangents instead of assembling one (B,T,3D) gradient.
        kernel, bias = self.qkv.kernel[...], self.qkv.bias[...]
        q, k, v = (_matmul(inp, kernel[:, i * d:(i + 1) * d], self.dtype) + bias[None, None, i * d:(i + 1) * d]
                   for i, inp in enumerate((h[:, :t], h, h)))  # (B,t|T,D) + (1,1,D): ranks match, as tests demand
        # (B,T,D) -> (B,T,H,D/H): the (batch, seq, heads, head_dim) layout dot_product_attention wants.
        q, k, v = (a.astype(self.dtype).reshape(b, -1, self.heads, hd) for a in (q, k, v))
        y = attention(q, k, v)  # (B,t,H,D/H), softmax in fp32
        x = x + self.proj(y.reshape(b, t, d))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class Encoder(nnx.Module):
    def __init__(self, c: Config, *, rngs: nnx.Rngs):
        dtype = DTYPES[c.precision]
        self.grid = c.image_size // c.patch_size
        self.patch = nnx.Conv(c.channels, c.hidden, kernel_size=(c.patch_size, c.patch_size),
                              strides=(c.patch_size, c.patch_size), padding="VALID", rngs=rngs)
        self.token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, c.hidden)) * 0.02)
        self.blocks = nnx.List([Block(c.hidden, c.heads, c.mlp_ratio, dtype, rngs=rngs) for _ in range(c.depth)])
        self.norm = nnx.LayerNorm(c.hidden, rngs=rngs)
        self.head = nnx.Linear(c.hidden, 2 * c.z_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        b = x.shape[0]
        h = self.patch(x)  # (B, S/P, S/P, D)
        h = h.reshape(b, -1, h.shape[-1]) + sincos_2d(h.shape[-1], self.grid)  # (B, N, D)
        token = jnp.broadcast_to(self.token[...], (b, 1, h.shape[-1])).astype(h.dtype)
        h = jnp.concatenate([token, h], axis=1)  # (B, 1+N, D)
        for block in self.blocks[:-1]:
            h = block(h)
        # Only the summary token is read out, so the last block computes its row alone: ~10%
        # fewer FLOPs per train step for the seed preset, same result.
        h = self.blocks[-1](h, queries=1)  # (B, 1, D)
        out = self.head(self.norm(h[:, 0]))  # (B, 2Z)
        mean, raw = jnp.split(out, 2, axis=-1)
        return mean, raw


class Decoder(nnx.Module):
    def __init__(self, c: Config, values_per_output: int, *, rngs: nnx.Rngs):
        dtype = DTYPES[c.precision]
        self.c = c
        self.grid = c.image_size // c.patch_size
        out_channels = values_per_output * c.channels
        self.embed = nnx.Linear(c.z_dim, c.hidden, rngs=rngs)
        self.blocks = nnx.List([Block(c.hidden, c.heads, c.mlp_ratio, dtype, rngs=rngs) for _ in range(c.depth)])
        self.norm = nnx.LayerNorm(c.hidden, rngs=rngs)
        self.head = nnx.Linear(c.hidden, c.patch_size * c.patch_size * out_channels, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        b, p, g = z.shape[0], self.c.patch_size, self.grid
        h = self.embed(z)  # (B, D)
        h = jnp.broadcast_to(h[:, None, :], (b, g * g, h.shape[-1])) + sincos_2d(h.shape[-1], g)  # (B,N,D)
        for block in self.blocks:
            h = block(h)
        out = self.head(self.norm(h))  # (B, N, P*P*C')
        cc = out.shape[-1] // (p * p)
        out = out.reshape(b, g, g, p, p, cc).transpose(0, 1, 3, 2, 4, 5)  # (B, g, P, g, P, C')
        return out.reshape(b, g * p, g * p, cc)  # (B, S, S, C')


class MLPEncoder(nnx.Module):
    """(B, *shape) -flatten-> (B,F) -> depth x [Dense(hidden), GELU] -> Dense -> mean, raw (B,Z) each.
    arch linear: depth 0, so mean and raw are affine in x."""

    def __init__(self, c: Config, *, rngs: nnx.Rngs):
        depth = 0 if c.arch == "linear" else c.depth
        widths = [int(np.prod(c.data_shape))] + [c.hidden] * depth
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.head = nnx.Linear(widths[-1], 2 * c.z_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x.reshape(x.shape[0], -1).astype(jnp.float32)  # (B, F)
        for layer in self.layers:
            h = jax.nn.gelu(layer(h))
        mean, raw = jnp.split(self.head(h), 2, axis=-1)
        return mean, raw


class MLPDecoder(nnx.Module):
    """(B,Z) -embed-> depth x [Dense(hidden), GELU] -> Dense -> (B, *shape[:-1], k * shape[-1]).

    arch linear: `embed` is the one affine map z -> W z + b (its sigma, if learned per dimension, is a
    free parameter of the likelihood head, so the model stays linear-Gaussian)."""

    def __init__(self, c: Config, values_per_output: int, *, rngs: nnx.Rngs):
        self.shape, self.k = c.data_shape, values_per_output
        depth = 0 if c.arch == "linear" else c.depth
        widths = [c.z_dim] + [c.hidden] * depth + [self.k * int(np.prod(self.shape))]
        self.embed = nnx.Linear(widths[0], widths[1], rngs=rngs)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[1:-1], widths[2:], strict=True)])

    def __call__(self, z: jax.Array) -> jax.Array:
        h = self.embed(z)
        for layer in self.layers:
            h = layer(jax.nn.gelu(h))
        return h.reshape(z.shape[0], *self.shape[:-1], self.k * self.shape[-1])


BACKBONES = {"transformer": (Encoder, Decoder), "conv": (ConvEncoder, ConvDecoder),
             "mlp": (MLPEncoder, MLPDecoder), "linear": (MLPEncoder, MLPDecoder)}


class VAE(nnx.Module):
    """encode(x) -> q(z|x), a DiagonalGaussian; decode(z) -> p(x|z), the likelihood's distribution;
    prior, p(z) (priors.py)."""

    def __init__(self, c: Config, *, rngs: nnx.Rngs):
        self.posterior_scale = c.posterior_scale
        self.likelihood = likelihoods.build(c)
        encoder, decoder = BACKBONES[c.arch]
        self.encoder = encoder(c, rngs=rngs)
        self.decoder = decoder(c, self.likelihood.values_per_output, rngs=rngs)
        # p(z), built after the encoder and decoder so that their initialisation does not depend on it;
        # a VampPrior shares the encoder (see priors.py). Every consumer of log p(z) asks this one.
        self.prior = priors.build(c, self.encoder, rngs=rngs)

    def encode(self, x: jax.Array) -> DiagonalGaussian:
        """x: (B,S,S,C) in [-1,1] or vectors (B,F) -> q(z|x) with (B,Z) mean and scale."""
        mean, raw = self.encoder(x)
        return DiagonalGaussian.from_raw(mean, raw, self.posterior_scale)

    def decode(self, z: jax.Array):
        """z: (B,Z) -> p(x|z) over (B,S,S,C) or (B,F)."""
        return self.likelihood(self.decoder(z))


def build(c: Config, seed: int | None = None) -> VAE:
    """A freshly initialised model for config c (parameters seeded by c.seed unless given)."""
    return VAE(c, rngs=nnx.Rngs(c.seed if seed is None else seed))


def count_params(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
