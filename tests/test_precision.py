"""Precision bf16: matmuls in bf16, everything the optimiser and the user see stays fp32.

Also the exact rewrites of the fast path: the matmul's hand-written gradient (both precisions) against a
float64 closed form, and the encoder's last block computing the summary token alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config
from flax import nnx

from jaxvae import model as model_lib
from jaxvae.losses import vae_loss
from jaxvae.model import Block, build


def _batch(c, n=8, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, c.image_size, c.image_size, c.channels), minval=-1, maxval=1)


@pytest.mark.slow  # two compiles of the whole loss and its gradient: 15-25 s on 2 cores
def test_bf16_keeps_parameters_gradients_and_losses_fp32_and_close_to_fp32():
    c32, c16 = micro_config(), micro_config(precision="bf16")
    graphdef32, params = nnx.split(build(c32))
    graphdef16, abstract16 = nnx.split(nnx.eval_shape(lambda: build(c16)))  # shapes and dtypes only
    x, key = _batch(c32), jax.random.key(1)

    def loss(graphdef, params):
        return vae_loss(nnx.merge(graphdef, params), x, key, c32.beta)

    grad = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True), static_argnums=0)
    (l32, _), g32 = grad(graphdef32, params)
    (l16, metrics), g16 = grad(graphdef16, params)
    floats = jax.tree.leaves((abstract16, g16, l16, metrics))
    assert all(v.dtype == jnp.float32 for v in floats), {v.dtype for v in floats}  # so Adam's state too
    np.testing.assert_allclose(l16, l32, rtol=1e-2)
    flat32, flat16 = jax.tree.leaves(g32), jax.tree.leaves(g16)
    cos = sum(jnp.vdot(a, b) for a, b in zip(flat32, flat16, strict=True)) / (
        jnp.sqrt(sum(jnp.vdot(a, a) for a in flat32)) * jnp.sqrt(sum(jnp.vdot(b, b) for b in flat16)))
    assert cos > 0.999, cos


def _bf16(x):
    return np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("k_in, n_out", [(8, 6), (6, 8)])  # both ways _weight_grad transposes
def test_matmul_and_both_of_its_gradients_match_float64_on_rounded_operands(dtype, k_in, n_out):
    rng = np.random.default_rng(0)
    x, k, g = (rng.normal(size=s).astype(np.float32) for s in [(2, 5, k_in), (k_in, n_out), (2, 5, n_out)])
    fwd_bwd = jax.jit(lambda x, k, g: (lambda y, vjp: (y, *vjp(g)))(*jax.vjp(
        lambda x, k: model_lib._matmul(x, k, dtype), x, k)))
    y, dx, dk = fwd_bwd(jnp.asarray(x), jnp.asarray(k), jnp.asarray(g))
    assert y.dtype == dx.dtype == dk.dtype == jnp.float32
    # Operands rounded to `dtype`, products and sums exact (float64 here, fp32 accumulation there).
    r = _bf16 if dtype == jnp.bfloat16 else (lambda a: np.asarray(a, np.float64))
    np.testing.assert_allclose(y, r(x) @ r(k), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, r(g) @ r(k).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk, r(x).reshape(-1, k_in).T @ r(g).reshape(-1, n_out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_block_with_one_query_is_the_first_row_of_the_full_block(dtype):
    graphdef, params = nnx.split(Block(32, 4, 2, dtype, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(0), (3, 9, 32))
    run = jax.jit(lambda params, queries=None: nnx.merge(graphdef, params)(x, queries), static_argnums=1)
    full, first = run(params), run(params, 1)
    assert first.shape == (3, 1, 32) and first.dtype == jnp.float32
    np.testing.assert_allclose(first, full[:, :1], rtol=1e-5, atol=1e-5)


def test_attention_falls_back_to_xla_where_cudnn_is_missing(monkeypatch):
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 2, 8)).astype(jnp.bfloat16) for i in range(3))
    expected = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"))(q, k, v)
    monkeypatch.setattr(model_lib.jax, "default_backend", lambda: "gpu")  # asks for cuDNN, which is absent
    out = jax.jit(model_lib.attention)(q, k, v)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))
